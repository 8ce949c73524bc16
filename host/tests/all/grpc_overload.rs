//! More requests than `sandbox_pool.max_size`: the extra ones wait a bounded
//! time, then get RESOURCE_EXHAUSTED, and the server keeps serving. More
//! compiles than `runtime.max_concurrent_compiles`: the same, while runs go
//! on.

use crate::common;

use std::time::Duration;

use chassis::config::Config;
use chassis::grpc::proto;
use chassis_tests::programs::*;
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_pool_get_resource_exhausted() {
    let mut config = Config::default();
    config.sandbox_pool.max_size = 2;
    config.sandbox_pool.min_size = 0;
    config.sandbox_pool.queue_timeout_ms = 100;
    config.runtime.max_fuel = None;
    let server = TestServer::start(config, &[]).await;
    let mut client = server.client().await;
    let spin = register(&mut client, HOSTILE_SPIN_COMPONENT).await;
    let hello = register(&mut client, HELLO_COMPONENT).await;

    // Two long runs hold both slots.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut c = client.clone();
        let mut req = run_request(&spin.id, "", "");
        req.limits = Some(proto::Limits {
            timeout_ms: 1500,
            cpu_percent: 10,
            ..Default::default()
        });
        busy.push(tokio::spawn(async move { c.run(req).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every further request waits 100 ms, then is refused.
    let mut refused = Vec::new();
    for _ in 0..8 {
        let mut c = client.clone();
        let req = run_request(&hello.id, "", "late");
        refused.push(tokio::spawn(async move { c.run(req).await }));
    }
    for r in refused {
        let status = assert_status(r.await.unwrap(), Code::ResourceExhausted, "overloaded");
        assert!(
            status.message().contains("all 2 sandbox slots"),
            "{}",
            status.message()
        );
    }
    for b in busy {
        assert_status(
            b.await.unwrap(),
            Code::DeadlineExceeded,
            "deadline-exceeded",
        );
    }
    // Slots are back: the server serves again.
    let out = client
        .run(run_request(&hello.id, "", "again"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, again!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_runs_and_interrupts_them_after_the_grace_period() {
    let mut config = Config::default();
    config.server.shutdown_grace_seconds = 1;
    let mut server = TestServer::start(config, &[]).await;
    let mut client = server.client().await;
    let spin = register(&mut client, HOSTILE_SPIN_COMPONENT).await;
    let hello = register(&mut client, HELLO_COMPONENT).await;

    // One run ends within the grace period, one would not.
    let mut short = run_request(&spin.id, "", "");
    short.limits = Some(proto::Limits {
        timeout_ms: 400,
        fuel: 0,
        cpu_percent: 20,
        ..Default::default()
    });
    let mut long = run_request(&spin.id, "", "");
    long.limits = Some(proto::Limits {
        timeout_ms: 30_000,
        cpu_percent: 20,
        ..Default::default()
    });
    long.limits.as_mut().unwrap().fuel = 1_000_000_000_000;
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let short = tokio::spawn(async move { c1.run(short).await });
    let long = tokio::spawn(async move { c2.run(long).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.shutdown();

    // The short run finishes on its own terms; the long one is interrupted.
    assert_status(
        short.await.unwrap(),
        Code::DeadlineExceeded,
        "deadline-exceeded",
    );
    let status = assert_status(long.await.unwrap(), Code::Unavailable, "unavailable");
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    server.done.await.unwrap().unwrap();
    // No new connections once stopped.
    assert!(
        tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .is_err()
    );
    let _ = hello;
}

/// A caller registering module after module cannot take the machine: its
/// second compile waits for its turn (one compile per caller, one compile
/// slot here) and is refused RESOURCE_EXHAUSTED after
/// `compile_queue_timeout_ms`, runs go on while the compile is in flight,
/// and once it is done registering works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiles_wait_their_turn_and_runs_go_on_meanwhile() {
    let mut config = Config::default();
    config.runtime.max_concurrent_compiles = 1;
    config.runtime.compile_queue_timeout_ms = 100;
    let server = TestServer::start(config, &[]).await;
    let mut client = server.client().await;
    let hello = register(&mut client, HELLO_COMPONENT).await;
    let (first, second) = (
        chassis_tests::slow_to_compile(4000, 1),
        chassis_tests::slow_to_compile(4000, 2),
    );

    let compiling = tokio::spawn({
        let mut client = client.clone();
        async move { register_bytes(&mut client, &first).await }
    });
    // Give the first request time to reach its compile slot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = assert_status(
        register_bytes(&mut client, &second).await,
        Code::ResourceExhausted,
        "overloaded",
    );
    assert!(
        status.message().contains("compile slots"),
        "{}",
        status.message()
    );
    // Runs are served while the compile holds its thread.
    let out = client
        .run(run_request(&hello.id, "", "meanwhile"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, meanwhile!");
    assert!(
        !compiling.is_finished(),
        "the compile finished too fast to show anything; make the module bigger"
    );

    // The first compile ran to its (refused: no world) end, and the queue
    // is open again.
    assert_status(
        compiling.await.unwrap(),
        Code::InvalidArgument,
        "invalid-module",
    );
    let again = chassis_tests::slow_to_compile(10, 3);
    assert_status(
        register_bytes(&mut client, &again).await,
        Code::InvalidArgument,
        "invalid-module",
    );
    register(&mut client, HELLO_COMPONENT).await;
}

/// A policy's `[limits] concurrent_runs` caps the runs under it, whoever
/// asks, while runs under other policies go on: the second run under a
/// one-at-a-time policy waits out the queue and is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_caps_its_concurrent_runs() {
    let mut config = Config::default();
    config.sandbox_pool.max_size = 4;
    config.sandbox_pool.min_size = 0;
    config.sandbox_pool.queue_timeout_ms = 200;
    config.runtime.max_fuel = None;
    let batch =
        "name = \"batch\"\n[limits]\nconcurrent_runs = 1\ntimeout = \"1500ms\"\ncpu_percent = 10\n";
    let server = TestServer::start(config, &[batch]).await;
    let mut client = server.client().await;
    let spin = register(&mut client, HOSTILE_SPIN_COMPONENT).await;
    let hello = register(&mut client, HELLO_COMPONENT).await;

    let holding = tokio::spawn({
        let mut client = client.clone();
        let request = run_request(&spin.id, "batch", "");
        async move { client.run(request).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = assert_status(
        client.run(run_request(&hello.id, "batch", "second")).await,
        Code::ResourceExhausted,
        "overloaded",
    );
    assert!(
        status
            .message()
            .contains("policy `batch` allows 1 runs at once (limits.concurrent_runs)"),
        "{}",
        status.message()
    );
    let out = client
        .run(run_request(&hello.id, "", "other"))
        .await
        .expect("another policy's runs are not held")
        .into_inner();
    assert_eq!(out.output, b"Hello, other!");
    assert_status(
        holding.await.unwrap(),
        Code::DeadlineExceeded,
        "deadline-exceeded",
    );
    // Its slot is back.
    let out = client
        .run(run_request(&hello.id, "batch", "again"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.output, b"Hello, again!");
}
