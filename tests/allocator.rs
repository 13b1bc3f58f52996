//! The worker binary allocates with jemalloc and the project's options (src/alloc.rs): jemalloc
//! reports where each of its options came from when asked (`confirm_conf`), so this fails if
//! the allocator is dropped, if the options stop reaching it, or if glibc's malloc is back.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_worker_binary_allocates_with_jemalloc_and_the_projects_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vaxpulse"))
        .arg("--version")
        .env("MALLOC_CONF", "confirm_conf:true")
        .output()
        .expect("the vaxpulse binary starts");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "global variable malloc_conf): \"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\""
        ),
        "jemalloc did not confirm the compiled-in options:\n{err}"
    );
    // An operator's MALLOC_CONF still applies on top of them.
    assert!(err.contains("Set conf value: confirm_conf:true"), "{err}");
}
