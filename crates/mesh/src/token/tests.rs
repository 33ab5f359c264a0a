use super::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn verifier() -> TokenVerifier {
    TokenVerifier::new(KeySource::Fixed(vec![(
        "k1".into(),
        key(1).verifying_key(),
    )]))
}

fn good() -> Claims {
    claims_for(
        "user-1",
        "acme",
        &["agent".into()],
        Duration::from_secs(60),
        "",
    )
}

fn forge(header: &str, claims: &Claims, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test]
async fn a_good_token_verifies() {
    let token = sign(&good(), "k1", &key(1));
    let claims = verifier().verify(&token).await.unwrap();
    assert_eq!(claims.tenant, "acme");
    assert_eq!(claims.roles, ["agent"]);
}

#[tokio::test]
async fn unsigned_confused_expired_early_misdirected_and_tampered_tokens_are_refused() {
    let v = verifier();
    let none = forge(r#"{"alg":"none","kid":"k1"}"#, &good(), b"");
    assert_eq!(
        v.verify(&none).await,
        Err(TokenError::Algorithm("none".into()))
    );
    // HS256 "signed" with the public key as the secret: refused by algorithm.
    let confused = forge(r#"{"alg":"HS256","kid":"k1"}"#, &good(), &[0u8; 32]);
    assert_eq!(
        v.verify(&confused).await,
        Err(TokenError::Algorithm("HS256".into()))
    );
    let mut expired = good();
    expired.exp = now_s() - 60;
    assert_eq!(
        v.verify(&sign(&expired, "k1", &key(1))).await,
        Err(TokenError::Expired)
    );
    let mut early = good();
    early.nbf = now_s() + 600;
    assert_eq!(
        v.verify(&sign(&early, "k1", &key(1))).await,
        Err(TokenError::NotYetValid)
    );
    let mut elsewhere = good();
    elsewhere.aud = "someone-else".into();
    assert_eq!(
        v.verify(&sign(&elsewhere, "k1", &key(1))).await,
        Err(TokenError::Audience)
    );
    // Signed by another key but naming k1, or naming a key that does not exist.
    assert_eq!(
        v.verify(&sign(&good(), "k1", &key(2))).await,
        Err(TokenError::Signature)
    );
    assert_eq!(
        v.verify(&sign(&good(), "k9", &key(1))).await,
        Err(TokenError::UnknownKey("k9".into()))
    );
    // A payload changed after signing.
    let token = sign(&good(), "k1", &key(1));
    let parts: Vec<&str> = token.split('.').collect();
    let mut other = good();
    other.tenant = "globex".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap()),
        parts[2]
    );
    assert_eq!(v.verify(&tampered).await, Err(TokenError::Signature));
    assert_eq!(v.verify("a.b").await, Err(TokenError::Malformed));
}

/// A delegation from auth's key `k1` for `delegate`'s key, living `ttl`.
fn delegation(delegate: &SigningKey, ttl: u64) -> String {
    let mut claims = claims_for(
        "orchestrator",
        crate::identity::PLATFORM_TENANT,
        &[RUN_SIGNER_ROLE.into()],
        Duration::from_secs(ttl),
        "",
    );
    claims.cnf = confirmation_key(&delegate.verifying_key());
    sign(&claims, "k1", &key(1))
}

fn run_claims(ttl: u64) -> Claims {
    let mut claims = claims_for(
        "user-1",
        "acme",
        &["agent".into()],
        Duration::from_secs(ttl),
        "task-1",
    );
    claims.attempt = 1;
    claims
}

#[tokio::test]
async fn a_run_token_signed_with_a_delegated_key_verifies() {
    let v = verifier();
    let delegate = key(7);
    let dlg = delegation(&delegate, 600);
    let token = sign_delegated(&run_claims(60), &dlg, &delegate);
    let claims = v.verify(&token).await.unwrap();
    assert_eq!((claims.task.as_str(), claims.attempt), ("task-1", 1));
    // A second token under the same delegation (cached) verifies too.
    let mut second = run_claims(60);
    second.attempt = 2;
    let claims = v.verify(&sign_delegated(&second, &dlg, &delegate)).await;
    assert_eq!(claims.unwrap().attempt, 2);
}

#[tokio::test]
async fn a_delegated_key_signs_nothing_but_run_tokens_within_its_delegation() {
    let v = verifier();
    let delegate = key(7);
    let dlg = delegation(&delegate, 600);
    let refused = |e: Result<Claims, TokenError>| matches!(e, Err(TokenError::Delegation(_)));
    // An admin token, a token for no task, and one for no attempt.
    let mut admin = run_claims(60);
    admin.roles = vec!["admin".into()];
    assert!(refused(
        v.verify(&sign_delegated(&admin, &dlg, &delegate)).await
    ));
    let mut untasked = run_claims(60);
    untasked.task.clear();
    assert!(refused(
        v.verify(&sign_delegated(&untasked, &dlg, &delegate)).await
    ));
    let mut no_attempt = run_claims(60);
    no_attempt.attempt = 0;
    assert!(refused(
        v.verify(&sign_delegated(&no_attempt, &dlg, &delegate))
            .await
    ));
    // Outliving the delegation.
    assert!(refused(
        v.verify(&sign_delegated(&run_claims(6000), &dlg, &delegate))
            .await
    ));
    // Signed by another key than the delegated one.
    assert_eq!(
        v.verify(&sign_delegated(&run_claims(60), &dlg, &key(8)))
            .await,
        Err(TokenError::Signature)
    );
    // A "delegation" that auth did not sign, or that is not a run signer's.
    let mut forged = claims_for(
        "orchestrator",
        crate::identity::PLATFORM_TENANT,
        &[RUN_SIGNER_ROLE.into()],
        Duration::from_secs(600),
        "",
    );
    forged.cnf = confirmation_key(&delegate.verifying_key());
    let self_signed = sign(&forged, "k1", &key(9));
    assert_eq!(
        v.verify(&sign_delegated(&run_claims(60), &self_signed, &delegate))
            .await,
        Err(TokenError::Signature)
    );
    forged.roles = vec!["agent".into()];
    let not_a_signer = sign(&forged, "k1", &key(1));
    assert!(refused(
        v.verify(&sign_delegated(&run_claims(60), &not_a_signer, &delegate))
            .await
    ));
    // A delegation of a delegation, and a delegation used as a credential.
    let nested = sign_delegated(&run_claims(60), &dlg, &delegate);
    assert!(refused(
        v.verify(&sign_delegated(&run_claims(60), &nested, &delegate))
            .await
    ));
    assert!(refused(v.verify(&dlg).await));
    // An expired delegation.
    let mut old = claims_for(
        "orchestrator",
        crate::identity::PLATFORM_TENANT,
        &[RUN_SIGNER_ROLE.into()],
        Duration::from_secs(600),
        "",
    );
    old.cnf = confirmation_key(&delegate.verifying_key());
    old.exp = now_s() - 60;
    let mut claims = run_claims(1);
    claims.exp = old.exp;
    assert_eq!(
        v.verify(&sign_delegated(
            &claims,
            &sign(&old, "k1", &key(1)),
            &delegate
        ))
        .await,
        Err(TokenError::Expired)
    );
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives in `authorization`, verification answers
        /// without panicking: random text, and three base64url parts of
        /// random JSON-ish bytes.
        #[test]
        fn any_presented_token_is_verified_or_refused(
            text in ".{0,300}",
            header in proptest::collection::vec(any::<u8>(), 0..200),
            payload in proptest::collection::vec(any::<u8>(), 0..400),
            signature in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let key = key(1).verifying_key();
            let _ = verify_with(&text, |_| Some(key));
            let parts = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(&header),
                URL_SAFE_NO_PAD.encode(&payload),
                URL_SAFE_NO_PAD.encode(&signature)
            );
            let _ = verify_with(&parts, |_| Some(key));
            // A well-formed header and a signed payload of any bytes.
            let signed_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","kid":"k1"}"#),
                URL_SAFE_NO_PAD.encode(&payload)
            );
            let signature = key_signature(&signed_input);
            let _ = verify_with(&format!("{signed_input}.{signature}"), |_| Some(key));
        }
    }

    fn key_signature(input: &str) -> String {
        URL_SAFE_NO_PAD.encode(key(1).sign(input.as_bytes()).to_bytes())
    }

    #[test]
    fn absurd_times_in_a_signed_token_do_not_overflow() {
        let mut claims = good();
        claims.exp = u64::MAX;
        claims.nbf = u64::MAX;
        let token = sign(&claims, "k1", &key(1));
        let verifying = key(1).verifying_key();
        assert_eq!(
            verify_with(&token, |_| Some(verifying)),
            Err(TokenError::NotYetValid)
        );
        let mut claims = good();
        claims.exp = u64::MAX;
        let token = sign(&claims, "k1", &key(1));
        assert!(verify_with(&token, |_| Some(verifying)).is_ok());
    }
}
