//! The holder supervisor's own checks (the exposure refusal at agent start).
use super::*;

#[test]
fn an_explicit_exposure_the_kernel_lacks_keeps_the_agent_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let probe = exposure::probe();
    let clones = || ProcessClones::new(dir.path(), EngineTuning::default()).unwrap();
    match clones().with_expose(ExposeKind::Nbd) {
        Ok(c) => assert!(probe.nbd && c.expose == ExposeKind::Nbd),
        Err(e) => {
            assert!(!probe.nbd, "{e}");
            assert!(e.contains("has no nbd driver") && e.contains("run `modprobe nbd`"), "{e}");
        }
    }
    // `auto` takes what there is; the holders get the operator's word, not the choice.
    if probe.fuse || probe.nbd || probe.ublk {
        assert_eq!(clones().with_expose(ExposeKind::Auto).unwrap().expose, ExposeKind::Auto);
    }
}
