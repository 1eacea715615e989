use super::*;
use crate::model::data::{ObservedDb, PgNames};

const ME: &str = "me1";

fn key() -> EnvKey {
    EnvKey::new("shop", "production")
}

fn env(wants: DataWants) -> DataEnv {
    DataEnv {
        key: key(),
        host: "h".into(),
        wants,
        on_delete: wants.on_delete,
        postgres: Some("postgres://admin@127.0.0.1:5432/postgres".into()),
        redis: Some("redis://127.0.0.1:6379".into()),
        database: Some(Seen::Observed(ObservedDatabase::default())),
        cache: Some(Seen::Observed(None)),
        recorded: None,
        credentials: Credentials {
            version: Some(3),
            database: Some((0, "pw-digest".into())),
            cache: Some("redis-digest".into()),
            live: vec![],
        },
    }
}

fn both() -> DataWants {
    DataWants {
        database: true,
        cache: true,
        on_delete: OnDelete::Retain,
    }
}

fn role(comment: Option<String>, login: bool) -> ObservedRole {
    let l = DatabaseLimits::default();
    ObservedRole {
        comment,
        can_login: login,
        connection_limit: if login { l.connections as i32 } else { -1 },
        settings: if login {
            vec![
                "role=shop_production".to_string(),
                format!("statement_timeout={}ms", l.statement_timeout_ms),
                format!(
                    "idle_in_transaction_session_timeout={}ms",
                    l.idle_in_transaction_ms
                ),
            ]
        } else {
            vec![]
        },
        member_of: if login {
            vec!["shop_production".into()]
        } else {
            vec![]
        },
    }
}

/// What a converged environment's servers and record look like.
fn converged() -> DataEnv {
    let mark = Some(pg_mark(ME, &key()));
    let names = PgNames::of(&key());
    let mut e = env(both());
    e.database = Some(Seen::Observed(ObservedDatabase {
        owner: Some(role(mark.clone(), false)),
        logins: [Some(role(mark, true)), None],
        database: Some(ObservedDb {
            owner: names.database.clone(),
            public_connect: false,
        }),
    }));
    let cache = CacheNames::of(&key());
    e.cache = Some(Seen::Observed(Some(ObservedCacheUser {
        enabled: true,
        passwords: 1,
        keys: vec![format!("~{}*", cache.prefix)],
        channels: vec![format!("&{}*", cache.prefix)],
        commands: String::new(),
    })));
    e.recorded = Some(DataRecord {
        database: Some(DatabaseRecord {
            server: e.postgres.clone().unwrap(),
            host: "h".into(),
            names,
            applied: [Some("pw-digest".into()), None],
        }),
        cache: Some(CacheRecord {
            server: e.redis.clone().unwrap(),
            host: "h".into(),
            names: cache,
            applied: vec!["redis-digest".into()],
        }),
    });
    e
}

fn plan(e: DataEnv) -> DataPlan {
    plan_data(ME, &[e], DatabaseLimits::default())
}

#[test]
fn a_new_environment_gets_its_database_and_cache() {
    let p = plan(env(both()));
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    assert_eq!(p.steps.len(), 2, "{:?}", p.steps);
    match &p.steps[0] {
        DataStep::EnsureDatabase {
            write,
            version,
            digest,
            ..
        } => {
            assert_eq!(write.names.database, "shop_production");
            assert_eq!(write.mark, pg_mark(ME, &key()));
            assert_eq!((write.login, *version), (0, Some(3)));
            assert_eq!(digest.as_deref(), Some("pw-digest"));
        }
        s => panic!("{s:?}"),
    }
    assert!(
        matches!(&p.steps[1], DataStep::EnsureCache { write, .. } if write.names.user == "codeb.shop.production")
    );
}

#[test]
fn a_converged_environment_plans_nothing() {
    let p = plan(converged());
    assert_eq!(p, DataPlan::default());
}

#[test]
fn a_new_password_is_set_again() {
    let mut e = converged();
    e.credentials.database = Some((0, "rotated".into()));
    e.credentials.cache = Some("rotated-too".into());
    let p = plan(e);
    assert_eq!(p.steps.len(), 2, "{:?}", p.steps);
}

#[test]
fn a_foreign_role_or_database_is_a_conflict_and_nothing_is_planned() {
    for (comment, why) in [
        (None, "a role codeb did not create"),
        (
            Some("set by the DBA".to_string()),
            "a role codeb did not create",
        ),
        (Some(pg_mark("other", &key())), "another codeb"),
        (
            Some(pg_mark(ME, &EnvKey::new("shop", "staging"))),
            "codeb's role of shop/staging",
        ),
    ] {
        let mut e = env(both());
        e.database = Some(Seen::Observed(ObservedDatabase {
            owner: Some(role(comment, true)),
            ..Default::default()
        }));
        let p = plan(e);
        assert!(
            p.steps
                .iter()
                .all(|s| !matches!(s, DataStep::EnsureDatabase { .. })),
            "{:?}",
            p.steps
        );
        let [DataNote::Conflict { what, .. }] = p.notes.as_slice() else {
            panic!("{:?}", p.notes)
        };
        assert!(
            what.contains(why) && what.contains("\"shop_production\""),
            "{what}"
        );
        assert_eq!(p.blocked().count(), 1);
    }
    let mut e = env(both());
    e.database = Some(Seen::Observed(ObservedDatabase {
        database: Some(ObservedDb {
            owner: "postgres".into(),
            public_connect: true,
        }),
        ..Default::default()
    }));
    let p = plan(e);
    assert!(
        matches!(&p.notes[..], [DataNote::Conflict { what, .. }] if what.contains("owned by \"postgres\""))
    );
}

#[test]
fn a_redis_user_codeb_has_no_record_of_is_foreign() {
    let mut e = env(both());
    e.cache = Some(Seen::Observed(Some(ObservedCacheUser::default())));
    let p = plan(e);
    assert!(
        matches!(&p.notes[..], [DataNote::Conflict { what, .. }] if what.contains("codeb.shop.production"))
    );
    assert_eq!(
        p.steps.len(),
        1,
        "the database is still planned: {:?}",
        p.steps
    );
}

#[test]
fn an_unreachable_server_blocks_the_environment() {
    let mut e = env(both());
    e.database = Some(Seen::Unreachable(
        "PostgreSQL at 127.0.0.1:1: connection refused".into(),
    ));
    let p = plan(e);
    assert_eq!(p.blocked().count(), 1);
    assert!(p.notes[0].to_string().contains("127.0.0.1:1"));
}

#[test]
fn removal_keeps_the_data_unless_asked_to_drop_it() {
    let mut e = converged();
    e.wants = DataWants::default();
    let p = plan(e.clone());
    assert!(p.steps.iter().all(|s| !s.destructive()), "{:?}", p.steps);
    assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
    assert!(p.notes.iter().all(|n| !n.blocks()));

    e.on_delete = OnDelete::Drop;
    let p = plan(e);
    let destructive: Vec<_> = p.steps.iter().filter(|s| s.destructive()).collect();
    assert_eq!(destructive.len(), 2, "{:?}", p.steps);
    assert!(p.notes.is_empty());
}

#[test]
fn a_drop_never_touches_a_database_that_is_no_longer_codebs() {
    let mut e = converged();
    e.wants = DataWants::default();
    e.on_delete = OnDelete::Drop;
    if let Some(Seen::Observed(obs)) = &mut e.database {
        obs.owner.as_mut().unwrap().comment = Some("taken over by the DBA".into());
    }
    let p = plan(e);
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s, DataStep::DropDatabase { .. })),
        "{:?}",
        p.steps
    );
    assert!(matches!(&p.notes[..], [DataNote::Conflict { .. }]));
}

#[test]
fn a_rotation_keeps_the_old_credentials_while_a_slot_runs_them_and_then_disables_them() {
    // Rotated: the latest version uses login 1 and a new cache password; the grace slot runs v3.
    let mut e = converged();
    e.credentials = Credentials {
        version: Some(4),
        database: Some((1, "pw2".into())),
        cache: Some("redis2".into()),
        live: vec![LiveCredentials {
            version: 3,
            database: Some((0, "pw-digest".into())),
            cache: Some("redis-digest".into()),
        }],
    };
    let p = plan(e.clone());
    let ensure = p.steps.iter().find_map(|s| match s {
        DataStep::EnsureDatabase { write, .. } => Some(write.login),
        _ => None,
    });
    assert_eq!(ensure, Some(1), "{:?}", p.steps);
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s, DataStep::DisableLogin { .. })),
        "the grace slot still uses login 0: {:?}",
        p.steps
    );
    let also = p.steps.iter().find_map(|s| match s {
        DataStep::EnsureCache { also, .. } => Some(also.clone()),
        _ => None,
    });
    assert_eq!(also, Some(vec![(3, "redis-digest".to_string())]));

    // The grace slot is gone: login 0 (observed able to log in) is disabled.
    e.credentials.live.clear();
    let p = plan(e);
    assert!(
        p.steps.iter().any(|s| matches!(s, DataStep::DisableLogin { login: 0, role, .. } if role == "shop_production_1")),
        "{:?}",
        p.steps
    );
}
