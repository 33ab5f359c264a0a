//! Specs as a caller with no credentials can send them (`ValidateTeam`,
//! inline specs at submission): deep nesting is refused before the YAML
//! parser sees it, durations never overflow, and no input panics.

use proptest::prelude::*;

fn research_crew() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/teams/research-crew.yaml"),
    )
    .unwrap()
}

#[test]
fn deep_flow_and_block_nesting_is_refused_naming_the_line() {
    // Before the bound, 240 KB of brackets took minutes of CPU.
    for (yaml, line) in [
        (
            format!(
                "name: x\nagents: {}{}",
                "[".repeat(120_000),
                "]".repeat(120_000)
            ),
            2,
        ),
        (format!("name: x\nagents: {}x\n", "{a: ".repeat(60_000)), 2),
        (format!("name: x\nagents:\n{}x\n", "- ".repeat(100)), 3),
    ] {
        let errors = amaos_teams::parse(&yaml).unwrap_err();
        let first = &errors.0[0];
        assert_eq!(first.line, Some(line), "{errors}");
        assert!(first.message.contains("nested deeper"), "{errors}");
    }
    // Nesting a real team uses is fine.
    amaos_teams::parse(&research_crew()).unwrap();
}

#[test]
fn durations_past_any_task_are_errors_not_overflows() {
    let crew = research_crew();
    for (field, text) in [
        ("max_wall_time", "18446744073709551615h"),
        ("max_wall_time", "99999999999999999m"),
        ("max_wall_time", "25h"),
    ] {
        let yaml = crew.replace("max_wall_time: 2m", &format!("{field}: \"{text}\""));
        assert_ne!(yaml, crew);
        let errors = amaos_teams::parse(&yaml).unwrap_err().to_string();
        assert!(errors.contains("budget.max_wall_time"), "{errors}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any text of YAML's punctuation, keys and numbers parses or fails,
    /// never panics.
    #[test]
    fn any_text_parses_or_fails_without_panicking(
        text in proptest::collection::vec(
            prop_oneof![
                Just("name: x\n"), Just("agents:\n"), Just("  - name: a\n"), Just("    model: replay\n"),
                Just("crew:\n"), Just("  tasks:\n"), Just("budget:\n"), Just("  max_wall_time: "),
                Just("9999999999999999999h"), Just("[["), Just("]]"), Just("{a: "), Just("}"),
                Just("&a "), Just("*a "), Just("- "), Just("? "), Just(": "), Just("\""), Just("'"),
                Just("\t"), Just("\n"), Just("#"), Just("|\n"), Just(">-\n"), Just("é"), Just("\u{0}"),
            ],
            0..200,
        )
    ) {
        let yaml: String = text.concat();
        let _ = amaos_teams::parse(&yaml);
    }

    /// Edits of a valid spec (a byte cut out, a line duplicated) never panic.
    #[test]
    fn mutated_specs_never_panic(cut in 0usize..4000, dup in 0usize..80) {
        let crew = research_crew();
        let mut yaml = crew.clone();
        if cut < yaml.len() && yaml.is_char_boundary(cut) {
            yaml.remove(cut);
        }
        let lines: Vec<&str> = crew.lines().collect();
        if let Some(line) = lines.get(dup % lines.len().max(1)) {
            yaml.push('\n');
            yaml.push_str(line);
        }
        let _ = amaos_teams::parse(&yaml);
    }
}
