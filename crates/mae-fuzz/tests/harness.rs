//! The harness's own checks: a panic, a hang, an over-allocation and a broken property are each
//! caught and named; mutations are deterministic for a seed.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use mae_fuzz::seeds::Seed;
use mae_fuzz::{case_input, CountingAlloc, FailureKind, Harness, Target};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

static SERIAL: Mutex<()> = Mutex::new(());

fn seeds() -> Vec<Seed> {
    vec![Seed::new("a", b"hello, world".to_vec()), Seed::new("b", vec![0u8; 64])]
}

fn fake(run: fn(&Path, &[u8]) -> Result<(), String>) -> &'static Target {
    Box::leak(Box::new(Target {
        name: "fake",
        about: "a target of the harness's tests",
        seeds,
        dict: &[b"TOKEN"],
        alloc_base: 1 << 20,
        alloc_factor: 2,
        run,
    }))
}

fn run(target: &'static Target, input: &[u8], timeout: Duration) -> Result<(), FailureKind> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Harness::new(timeout).expect("installed").run_case(target, input).map(|_| ())
}

#[test]
fn a_passing_case_passes() {
    let target = fake(|_, input| {
        std::hint::black_box(input.to_vec());
        Ok(())
    });
    assert_eq!(run(target, b"fine", Duration::from_secs(5)), Ok(()));
}

#[test]
fn a_panic_is_caught_with_its_location() {
    let target = fake(|_, input| {
        let i = input.len() + 10;
        let _ = input[i];
        Ok(())
    });
    match run(target, b"x", Duration::from_secs(5)) {
        Err(FailureKind::Panic(m)) => {
            assert!(m.contains("index out of bounds") && m.contains("harness.rs"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hang_times_out() {
    let target = fake(|_, _| {
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    });
    assert!(matches!(run(target, b"x", Duration::from_millis(200)), Err(FailureKind::Timeout(_))));
}

#[test]
fn an_over_allocation_is_caught() {
    let target = fake(|_, _| {
        std::hint::black_box(vec![1u8; 4 << 20]);
        Ok(())
    });
    match run(target, b"tiny", Duration::from_secs(5)) {
        Err(FailureKind::OverAlloc { peak, limit, largest }) => {
            assert!(peak >= 4 << 20 && limit == (1 << 20) + 8 && largest >= 4 << 20)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_broken_property_is_reported() {
    let target = fake(|_, _| Err("round trip".into()));
    assert_eq!(run(target, b"x", Duration::from_secs(5)), Err(FailureKind::Check("round trip".into())));
}

#[test]
fn cases_are_seeds_then_deterministic_mutations() {
    let target = fake(|_, _| Ok(()));
    let seeds = seeds();
    assert_eq!(case_input(target, &seeds, 7, 0), seeds[0].bytes);
    assert_eq!(case_input(target, &seeds, 7, 1), seeds[1].bytes);
    let a: Vec<Vec<u8>> = (2..50).map(|i| case_input(target, &seeds, 7, i)).collect();
    let b: Vec<Vec<u8>> = (2..50).map(|i| case_input(target, &seeds, 7, i)).collect();
    let c: Vec<Vec<u8>> = (2..50).map(|i| case_input(target, &seeds, 8, i)).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().filter(|x| !seeds.iter().any(|s| &s.bytes == *x)).count() > 40);
}

#[test]
fn every_target_has_seeds_and_a_sane_limit() {
    let names: Vec<&str> = mae_fuzz::TARGETS.iter().map(|t| t.name).collect();
    let expected = [
        "safetensors",
        "torch",
        "config-json",
        "idx",
        "cifar",
        "image",
        "data-spec",
        "parquet",
        "toml-config",
        "cli",
    ];
    assert_eq!(names, expected);
    for t in mae_fuzz::TARGETS {
        assert!((t.seeds)().len() >= 2, "{}", t.name);
        assert!(t.alloc_limit(0) >= 64 << 10 && t.alloc_factor >= 1, "{}", t.name);
    }
}
