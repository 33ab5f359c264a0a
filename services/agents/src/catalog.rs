//! The teams a worker serves by name, loaded from `agents.teams_dir` at start.
//! A spec that does not validate stops the worker from starting, with the
//! file, line and field named.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use amaos_teams::TeamSpec;

/// Teams by name.
#[derive(Clone, Default)]
pub struct Catalog {
    teams: Arc<BTreeMap<String, Arc<TeamSpec>>>,
}

/// Why the catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The directory could not be read.
    #[error("agents.teams_dir {0}: {1}")]
    Dir(String, std::io::Error),
    /// A spec is invalid.
    #[error("{file}: {message}")]
    Spec {
        /// The file.
        file: String,
        /// What is wrong, with lines.
        message: String,
    },
}

impl Catalog {
    /// Loads every `*.yaml`/`*.yml` in `dir`; a missing directory is an empty catalog.
    pub fn load(dir: &Path, max_bytes: usize) -> Result<Self, CatalogError> {
        let mut teams = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), "teams directory not found; serving inline specs only");
                return Ok(Self::default());
            }
            Err(e) => return Err(CatalogError::Dir(dir.display().to_string(), e)),
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        paths.sort();
        for path in paths {
            let file = path.display().to_string();
            let text =
                std::fs::read_to_string(&path).map_err(|e| CatalogError::Dir(file.clone(), e))?;
            if text.len() > max_bytes {
                return Err(CatalogError::Spec {
                    file,
                    message: format!("larger than agents.max_spec_bytes ({max_bytes})"),
                });
            }
            let spec = amaos_teams::parse(&text).map_err(|e| CatalogError::Spec {
                file: file.clone(),
                message: e.to_string(),
            })?;
            if teams.contains_key(&spec.name) {
                return Err(CatalogError::Spec {
                    file,
                    message: format!("team `{}` is defined by another file too", spec.name),
                });
            }
            teams.insert(spec.name.clone(), Arc::new(spec));
        }
        Ok(Self {
            teams: Arc::new(teams),
        })
    }

    /// The team called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<TeamSpec>> {
        self.teams.get(name).cloned()
    }

    /// Every team, by name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<TeamSpec>> {
        self.teams.values()
    }

    /// The team names.
    pub fn names(&self) -> Vec<String> {
        self.teams.keys().cloned().collect()
    }
}
