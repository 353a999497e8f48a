use super::*;

const TOKEN: &str = "the-api-token-0123456789";

fn auth() -> Auth {
    Auth::with_limit(
        Tokens::fixed(TOKEN.into()),
        Some("scrape-token-0123456789".into()),
        false,
        3,
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_path_has_one_access_class() {
    for (path, class) in [
        ("/", Access::Public),
        ("/static/app.js", Access::Public),
        ("/healthz", Access::Public),
        ("/readyz", Access::Public),
        ("/metrics", Access::Scrape),
        ("/api/login", Access::Login),
        ("/api/state", Access::Api),
        ("/api/events", Access::Api),
        ("/api/runs/x/model", Access::Api),
        ("/api/nope", Access::Api),
        ("/static", Access::Api),
        ("/anything", Access::Api),
    ] {
        assert_eq!(access(path), class, "{path}");
    }
}

#[test]
fn api_requests_need_the_token_or_a_session_with_its_csrf_token() {
    let auth = auth();
    let now = Instant::now();
    let source = ip("127.0.0.1");
    let check = |c: Credentials| auth.check(Access::Api, &c, source, now);
    assert!(matches!(check(Credentials::default()), Err(Refusal::Missing)));
    let bearer = format!("Bearer {TOKEN}");
    assert!(matches!(
        check(Credentials {
            authorization: Some(&bearer),
            changes_state: true,
            ..Default::default()
        }),
        Ok(Principal::Bearer { .. })
    ));
    let (id, session) = auth.login(TOKEN, source, now).unwrap();
    fn with_session<'a>(id: &'a str, csrf: Option<&'a str>, changes_state: bool) -> Credentials<'a> {
        Credentials {
            session_cookie: Some(id),
            csrf_header: csrf,
            changes_state,
            ..Default::default()
        }
    }
    assert!(matches!(
        check(with_session(&id, None, false)),
        Ok(Principal::Session { .. })
    ));
    assert_eq!(check(with_session(&id, None, true)).unwrap_err(), Refusal::Csrf);
    assert_eq!(
        check(with_session(&id, Some("forged"), true)).unwrap_err(),
        Refusal::Csrf
    );
    assert!(check(with_session(&id, Some(&session.csrf), true)).is_ok());
    // A stale cookie is "not signed in", not a failed guess.
    let stale = Credentials {
        session_cookie: Some("0000"),
        ..Default::default()
    };
    assert_eq!(check(stale).unwrap_err(), Refusal::Missing);
}

#[test]
fn wrong_tokens_are_throttled_per_source_and_a_throttled_source_is_refused_even_with_the_token() {
    let auth = auth();
    let now = Instant::now();
    let (attacker, operator) = (ip("10.0.0.9"), ip("10.0.0.1"));
    let wrong = Credentials {
        authorization: Some("Bearer guess-0123456789abcdef"),
        ..Default::default()
    };
    for _ in 0..3 {
        assert_eq!(
            auth.check(Access::Api, &wrong, attacker, now).unwrap_err(),
            Refusal::WrongToken
        );
    }
    let right = format!("Bearer {TOKEN}");
    let good = Credentials {
        authorization: Some(&right),
        ..Default::default()
    };
    assert!(matches!(
        auth.check(Access::Api, &good, attacker, now),
        Err(Refusal::Throttled(_))
    ));
    assert!(matches!(
        auth.login(TOKEN, attacker, now),
        Err(Refusal::Throttled(_))
    ));
    assert!(auth.check(Access::Api, &good, operator, now).is_ok());
    assert!(auth
        .check(Access::Api, &good, attacker, now + limiter::WINDOW)
        .is_ok());
    // Wrong logins count too.
    for _ in 0..3 {
        assert_eq!(
            auth.login("nope-0123456789abcdef", operator, now).unwrap_err(),
            Refusal::WrongToken
        );
    }
    assert!(matches!(
        auth.login(TOKEN, operator, now),
        Err(Refusal::Throttled(_))
    ));
    // A session opened before keeps working from a throttled address.
    let later = now + limiter::WINDOW;
    let (id, _) = auth.login(TOKEN, attacker, later).unwrap();
    for _ in 0..3 {
        let _ = auth.check(Access::Api, &wrong, attacker, later);
    }
    assert!(matches!(
        auth.check(Access::Api, &good, attacker, later),
        Err(Refusal::Throttled(_))
    ));
    let session = Credentials {
        session_cookie: Some(&id),
        ..Default::default()
    };
    assert!(auth.check(Access::Api, &session, attacker, later).is_ok());
}

#[test]
fn metrics_take_the_scrape_token_or_the_api_token_and_are_open_without_one() {
    let auth = auth();
    let now = Instant::now();
    let source = ip("127.0.0.1");
    let scrape = |header: Option<&str>| {
        auth.check(
            Access::Scrape,
            &Credentials {
                authorization: header,
                ..Default::default()
            },
            source,
            now,
        )
    };
    assert!(scrape(Some("Bearer scrape-token-0123456789")).is_ok());
    assert!(scrape(Some(&format!("Bearer {TOKEN}"))).is_ok());
    assert_eq!(scrape(None).unwrap_err(), Refusal::Missing);
    assert_eq!(
        scrape(Some("Bearer nope-0123456789")).unwrap_err(),
        Refusal::WrongToken
    );
    let open = Auth::new(Tokens::fixed(TOKEN.into()), None, false);
    assert!(open
        .check(Access::Scrape, &Credentials::default(), source, now)
        .is_ok());
    assert!(open
        .check(Access::Public, &Credentials::default(), source, now)
        .is_ok());
}

#[test]
fn a_session_ends_when_its_token_is_rotated_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let (tokens, _) = Tokens::resolve(None, None, &file).unwrap();
    let auth = Auth::new(tokens, None, false);
    let source = ip("127.0.0.1");
    let (id, _) = auth.login(TOKEN, source, Instant::now()).unwrap();
    let cookie = Credentials {
        session_cookie: Some(&id),
        ..Default::default()
    };
    assert!(auth.check(Access::Api, &cookie, source, Instant::now()).is_ok());
    std::fs::write(&file, "the-next-token-0123456789\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        auth.check(Access::Api, &cookie, source, Instant::now())
            .unwrap_err(),
        Refusal::Missing
    );
}
