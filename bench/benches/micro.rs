//! Criterion micro benchmarks of sipreg's hot path, through the crates' public APIs:
//! framing, header parsing, access-token validation, the REGISTER core and config rendering.
//! Run: `cargo bench -p sipreg-bench --bench micro` (see BENCHMARKS.md).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::signature::{ParsedPublicKey, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sipreg_bench::sip::{write_register, RegisterParams};
use sipreg_bench::Transport;
use sipreg_registrar::{
    process, Authenticators, BearerError, BearerValidator, ConnectionFacts, DigestAuth, Location,
    PortKind, Registrar, RegistrarConfig, Request, StreamFramer, TokenIdentity,
};
use sipreg_store::{Device, Directory, Line, Node, RefreshToken, SqliteStore, Store, User};
use sipreg_tokensvc::{AccessTokenValidator, KeyRing, TokenConfig, TokenService};

const NOW: i64 = 1_800_000_000;
const LINES: u64 = 64;

/// A store with one user owning one OAuth device of 64 lines, OAuth mode on, one node; and a
/// token service over its keys.
struct World {
    _dir: tempfile::TempDir,
    directory: Directory,
    tokens: TokenService,
    token_cfg: TokenConfig,
}

fn world() -> World {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("sipreg.db")).unwrap());
        store
            .create_user(&User {
                id: "bench".into(),
                password_hash: String::new(),
                created_at: NOW,
            })
            .await
            .unwrap();
        store
            .create_device(&Device {
                name: "BENCH0".into(),
                owner: "bench".into(),
                lines: (0..LINES)
                    .map(|i| Line {
                        dn: (100_000 + i).to_string(),
                        display_name: None,
                    })
                    .collect(),
                oauth: true,
                updated_at: NOW,
                model: String::new(),
                profile: String::new(),
            })
            .await
            .unwrap();
        store.set_oauth_mode(true).await.unwrap();
        store
            .upsert_node(&Node {
                name: "node1".into(),
                host: "sipreg.example.com".into(),
                sip_port: 5060,
                secured_sip_port: 5061,
                sip_oauth_port: 5090,
                sip_mra_oauth_port: 5091,
            })
            .await
            .unwrap();
        let directory = Directory::load(store.as_ref()).await.unwrap();
        let keys = KeyRing::load_or_create(store.as_ref(), NOW).await.unwrap();
        let token_cfg = TokenConfig::default();
        let tokens = TokenService::new(store, keys, token_cfg.clone());
        World {
            _dir: dir,
            directory,
            tokens,
            token_cfg,
        }
    })
}

fn token(w: &World, now: i64) -> String {
    w.tokens
        .issue_access_token("bench", "softphone", "sip:register", now)
        .unwrap()
}

/// The registrar's view of the token service, as `sipreg serve` wires it.
struct Validator(AccessTokenValidator);

impl BearerValidator for Validator {
    fn validate(&self, token: &str, now: i64) -> Result<TokenIdentity, BearerError> {
        let c = self.0.validate(token, now).map_err(|e| BearerError {
            description: e.to_string(),
        })?;
        Ok(TokenIdentity {
            user: c.sub,
            scope: c.scope,
        })
    }
}

/// Accepts every token as the bench user: the REGISTER core without signature checks.
struct TrustAll;

impl BearerValidator for TrustAll {
    fn validate(&self, _token: &str, _now: i64) -> Result<TokenIdentity, BearerError> {
        Ok(TokenIdentity {
            user: "bench".into(),
            scope: "sip:register".into(),
        })
    }
}

fn register_bytes(token: &str, line: u64, cseq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    write_register(
        &mut out,
        &RegisterParams {
            transport: Transport::Tls,
            local: "127.0.0.1:40000".parse().unwrap(),
            domain: "localhost",
            line,
            device: Some("BENCH0"),
            run_id: 0x5eed,
            cseq,
            expires: 3600,
            token: Some(token),
        },
    );
    out
}

fn facts() -> ConnectionFacts {
    let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    ConnectionFacts {
        remote,
        local: "127.0.0.1:5090".parse().unwrap(),
        flow: 1,
        transport: sipreg_registrar::Transport::Tls,
        port: PortKind::SipOAuth,
    }
}

fn framer(c: &mut Criterion) {
    let w = world();
    let msg = register_bytes(&token(&w, NOW), 100_000, 1);
    let mut g = c.benchmark_group("framer");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("one_register_whole", |b| {
        let mut f = StreamFramer::new(64 * 1024);
        b.iter(|| {
            f.push(black_box(&msg)).unwrap();
            black_box(f.next_frame().unwrap());
        })
    });
    g.bench_function("one_register_in_100_byte_reads", |b| {
        let mut f = StreamFramer::new(64 * 1024);
        b.iter(|| {
            for chunk in msg.chunks(100) {
                f.push(black_box(chunk)).unwrap();
            }
            black_box(f.next_frame().unwrap());
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let w = world();
    let msg = register_bytes(&token(&w, NOW), 100_000, 1);
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("request_parse", |b| {
        b.iter(|| black_box(Request::parse(black_box(&msg)).unwrap()))
    });
    g.bench_function("request_parse_and_typed_headers", |b| {
        b.iter(|| {
            let r = Request::parse(black_box(&msg)).unwrap();
            black_box((
                r.via(),
                r.cseq().unwrap(),
                r.call_id().unwrap(),
                r.aor().unwrap(),
                r.contacts().unwrap(),
                r.expires().unwrap(),
                r.authorization(),
            ));
        })
    });
    g.finish();
}

/// The validator as `sipreg serve` wires it (with the directory, so user checks run too).
fn validator(w: &World) -> AccessTokenValidator {
    let v = AccessTokenValidator::new(w.tokens.keys().clone(), &w.token_cfg);
    v.attach_directory(w.directory.clone());
    v
}

/// CPU time of the benchmarking thread: on a machine shared with compilers and other benches,
/// wall time counts their slices too, CPU time counts only ours. Shown in the same units.
struct ThreadCpuTime;

/// The wall-clock formatter prints nanoseconds as time, which is what our values are.
static WALL: WallTime = WallTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec for the call to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on linux");
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, started: u64) -> u64 {
        thread_cpu_ns().saturating_sub(started)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// Token validation in CPU time of the calling thread (see [`ThreadCpuTime`]).
fn tokens(c: &mut Criterion<ThreadCpuTime>) {
    let w = world();
    let validator = validator(&w);
    let tok = token(&w, NOW);
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    // Cached: a refresh re-using its token costs a SHA-256 and a map lookup.
    g.bench_function("validate_cached", |b| {
        b.iter(|| black_box(validator.validate(black_box(&tok), NOW).unwrap()))
    });
    // Cold: a token never seen before (cache emptied outside the timing): ES256 verify + claims.
    g.bench_function("validate_cold", |b| {
        b.iter_batched(
            || validator.clear_cache(),
            |()| black_box(validator.validate(black_box(&tok), NOW).unwrap()),
            // One setup per timed call: a batch would clear once and then hit the cache.
            BatchSize::PerIteration,
        )
    });
    g.bench_function("issue_access_token_es256", |b| {
        b.iter(|| black_box(token(&w, NOW)))
    });
    // The signature check alone, three ways, to show what validate_cold adds on top of it:
    // jsonwebtoken (boxes a verifier and parses the key per call), aws-lc-rs with the key
    // parsed per call, and aws-lc-rs with a key parsed once (what the validator holds).
    let jwks = w.tokens.keys().jwks();
    let jwk = &jwks["keys"][0];
    let decoding = jsonwebtoken::DecodingKey::from_ec_components(
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap(),
    )
    .unwrap();
    let (signed, sig_b64) = tok.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig_b64).unwrap();
    let point = decoding.as_bytes().to_vec();
    let parsed = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).unwrap();
    g.bench_function("es256_verify_jsonwebtoken", |b| {
        b.iter(|| {
            black_box(
                jsonwebtoken::crypto::verify(
                    black_box(sig_b64),
                    black_box(signed.as_bytes()),
                    &decoding,
                    jsonwebtoken::Algorithm::ES256,
                )
                .unwrap(),
            )
        })
    });
    g.bench_function("es256_verify_aws_lc_unparsed_key", |b| {
        b.iter(|| {
            let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
            black_box(key.verify(black_box(signed.as_bytes()), black_box(&sig))).unwrap()
        })
    });
    g.bench_function("es256_verify_aws_lc_parsed_key", |b| {
        b.iter(|| {
            black_box(parsed.verify_sig(black_box(signed.as_bytes()), black_box(&sig))).unwrap()
        })
    });
    g.finish();
}

fn register_core(c: &mut Criterion) {
    let w = world();
    let tok = token(&w, NOW);
    let cfg = RegistrarConfig::default();
    let digest = DigestAuth::new([7; 32], 300);
    let conn = facts();
    let trust_all = TrustAll;
    let inner = validator(&w);
    let real = Validator(inner.clone());
    let mut g = c.benchmark_group("register");
    g.throughput(Throughput::Elements(1));
    // Cold: the validator's token cache is emptied before each request (outside the timing).
    for (name, validator, cold) in [
        (
            "process_no_token_check",
            &trust_all as &dyn BearerValidator,
            false,
        ),
        ("process_token_cached", &real as &dyn BearerValidator, false),
        ("process_token_cold", &real as &dyn BearerValidator, true),
    ] {
        let location = Location::new();
        let snap = w.directory.snapshot();
        let mut cseq = 0u32;
        // Requests parsed outside the timing; CSeq must grow for a refresh to be accepted.
        let first = process(
            &Request::parse(&register_bytes(&tok, 100_000, 1)).unwrap(),
            &conn,
            &snap,
            Authenticators {
                bearer: validator,
                digest: &digest,
            },
            &location,
            &cfg,
            NOW,
        )
        .unwrap();
        assert_eq!(
            first.status,
            200,
            "{}",
            String::from_utf8_lossy(&first.bytes)
        );
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    cseq += 1;
                    if cold {
                        inner.clear_cache();
                    }
                    let line = 100_000 + u64::from(cseq) % LINES;
                    Request::parse(&register_bytes(&tok, line, cseq + 1)).unwrap()
                },
                |req| {
                    let r = process(
                        &req,
                        &conn,
                        &snap,
                        Authenticators {
                            bearer: validator,
                            digest: &digest,
                        },
                        &location,
                        &cfg,
                        NOW,
                    )
                    .unwrap();
                    debug_assert_eq!(r.status, 200);
                    black_box(r)
                },
                // Per iteration for the cold case: a batch would clear the cache only once.
                if cold {
                    BatchSize::PerIteration
                } else {
                    BatchSize::SmallInput
                },
            )
        });
    }
    let registrar = Registrar::new(
        RegistrarConfig::default(),
        w.directory.clone(),
        Arc::new(Validator(validator(&w))),
    );
    let mut cseq = 1u32;
    g.bench_function("registrar_handle_parse_to_bytes", |b| {
        b.iter_batched(
            || {
                cseq += 1;
                register_bytes(&tok, 100_000 + u64::from(cseq) % LINES, cseq)
            },
            |msg| black_box(registrar.handle_at(&msg, &conn, NOW)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn config_render(c: &mut Criterion) {
    let w = world();
    let snap = w.directory.snapshot();
    let device = snap.device("BENCH0").unwrap().clone();
    let mut g = c.benchmark_group("config");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render_device_config_64_lines", |b| {
        b.iter(|| black_box(sipreg_tftp_config::render_device_config(&device, &snap)))
    });
    g.finish();
}

/// Directory lookups on the registrar's hot path, with 10,000 devices of 2,000 users loaded:
/// each iteration looks up 1,000 different names (a device by mixed-case name, a user's devices,
/// whether a user exists, a user's revocation time).
fn directory_lookups(c: &mut Criterion) {
    const USERS: usize = 2_000;
    const PER_USER: usize = 5;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_dir, directory) = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("sipreg.db")).unwrap();
        for u in 0..USERS {
            let id = format!("user{u}");
            store
                .create_user(&User {
                    id: id.clone(),
                    password_hash: String::new(),
                    created_at: NOW,
                })
                .await
                .unwrap();
            for d in 0..PER_USER {
                store
                    .create_device(&Device {
                        name: format!("CSFuser{u}d{d}"),
                        owner: id.clone(),
                        lines: vec![Line {
                            dn: (200_000 + u * PER_USER + d).to_string(),
                            display_name: None,
                        }],
                        oauth: true,
                        updated_at: NOW,
                        model: String::new(),
                        profile: String::new(),
                    })
                    .await
                    .unwrap();
            }
            if u % 10 == 0 {
                store.set_tokens_not_before(&id, NOW).await.unwrap();
            }
        }
        let directory = Directory::load(&store).await.unwrap();
        (dir, directory)
    });
    let snap = directory.snapshot();
    // Spread over the directory, so the lookups are not all served from one cache line.
    let users: Vec<String> = (0..1_000)
        .map(|i| format!("user{}", (i * 7) % USERS))
        .collect();
    let devices: Vec<String> = (0..1_000)
        .map(|i| format!("CSFuser{}d{}", (i * 7) % USERS, i % PER_USER))
        .collect();
    let mut g = c.benchmark_group("directory_10k_devices");
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("device", |b| {
        b.iter(|| {
            for n in &devices {
                black_box(snap.device(n));
            }
        })
    });
    g.bench_function("devices_of", |b| {
        b.iter(|| {
            for u in &users {
                black_box(snap.devices_of(u));
            }
        })
    });
    g.bench_function("user_exists", |b| {
        b.iter(|| {
            for u in &users {
                black_box(snap.user_exists(u));
            }
        })
    });
    g.bench_function("tokens_not_before", |b| {
        b.iter(|| {
            for u in &users {
                black_box(snap.tokens_not_before(u));
            }
        })
    });
    g.finish();
}

/// The store half of a refresh grant on SQLite (`use_refresh_token`, then
/// `insert_refresh_token` of its successor) with 20,000 tokens already stored, as after a
/// provisioning run: the cost that grows with the table; then the same rotation in one
/// transaction (`rotate_refresh_token`).
fn refresh_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("sipreg.db")).unwrap());
    let record = |i: u64| RefreshToken {
        hash: format!("{i:064x}"),
        user_id: "bench".into(),
        client_id: "jabber".into(),
        scope: "sip:register".into(),
        issued_at: NOW,
        expires_at: NOW + 86_400,
        family: format!("family{}", i % 16),
    };
    let mut next = 0u64;
    rt.block_on(async {
        store
            .create_user(&User {
                id: "bench".into(),
                password_hash: String::new(),
                created_at: NOW,
            })
            .await
            .unwrap();
        while next < 20_000 {
            store.insert_refresh_token(&record(next)).await.unwrap();
            next += 1;
        }
    });
    let mut used = 0u64;
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sqlite_refresh_rotate_20k_stored", |b| {
        b.iter(|| {
            rt.block_on(async {
                let got = store
                    .use_refresh_token(&format!("{used:064x}"), NOW)
                    .await
                    .unwrap();
                black_box(got);
                store.insert_refresh_token(&record(next)).await.unwrap();
            });
            used += 1;
            next += 1;
        })
    });
    // The same rotation as one transaction (`rotate_refresh_token`), as the grant does now.
    g.bench_function("sqlite_refresh_rotate_one_tx_20k_stored", |b| {
        b.iter(|| {
            let succ = record(next);
            rt.block_on(async {
                let got = store
                    .rotate_refresh_token(
                        &format!("{used:064x}"),
                        NOW,
                        Box::new(move |_| Some(succ)),
                    )
                    .await
                    .unwrap();
                black_box(got);
            });
            used += 1;
            next += 1;
        })
    });
    g.finish();
    // 16 rotations in flight, as 16 concurrent grant chains: the writer commits what queued
    // together (group commit), so this is the store's rotation throughput under load.
    const IN_FLIGHT: u64 = 16;
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(IN_FLIGHT));
    g.bench_function("sqlite_refresh_rotate_16_in_flight_20k_stored", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for k in 0..IN_FLIGHT {
                    let store = store.clone();
                    let old = format!("{:064x}", used + k);
                    let succ = record(next + k);
                    set.spawn(async move {
                        store
                            .rotate_refresh_token(&old, NOW, Box::new(move |_| Some(succ)))
                            .await
                            .unwrap()
                    });
                }
                while let Some(r) = set.join_next().await {
                    black_box(r.unwrap());
                }
            });
            used += IN_FLIGHT;
            next += IN_FLIGHT;
        })
    });
    g.finish();
}

criterion_group!(
    name = token_benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = tokens
);
criterion_group!(
    benches,
    framer,
    parsing,
    register_core,
    config_render,
    refresh_store,
    directory_lookups
);
criterion_main!(benches, token_benches);
