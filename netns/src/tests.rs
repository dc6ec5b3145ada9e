use std::net::Ipv4Addr;

use super::*;

#[test]
fn only_names_with_a_pid_after_the_prefix_are_ours() {
    assert_eq!(pid_of("weftup-", "weftup-1234-node"), Some(1234));
    assert_eq!(pid_of("weftup-", "weftup-1234-orders-v1"), Some(1234));
    assert_eq!(pid_of("weftup-", "weftup-x-node"), None);
    assert_eq!(pid_of("weftup-", "weftpod-1234-node"), None);
    let me = format!("weftnt-{}-node", std::process::id());
    assert!(!is_stale("weftnt-", &me), "this process is alive");
    assert!(!is_stale("weftnt-", "weftnt-x-node"), "no pid: not ours");
}

#[test]
fn a_failing_command_says_what_ran_and_its_stderr() {
    let e = run("ip", &["netns", "exec", "weftnt-no-such-namespace", "true"])
        .expect_err("no such namespace");
    let text = e.to_string();
    assert!(
        text.contains("`ip netns exec weftnt-no-such-namespace true` failed"),
        "{text}"
    );
    let e = run("/nonexistent/program", &[]).expect_err("no such program");
    assert!(e.to_string().contains("/nonexistent/program"), "{e}");
}

/// The node, or `None` when this machine cannot have namespaces and `WEFT_NO_NETNS=1` says so.
fn node(name: String, gateway: Ipv4Addr) -> Option<Node> {
    match Node::create(name, gateway) {
        Ok(n) => Some(n),
        Err(e) if std::env::var("WEFT_NO_NETNS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: network namespaces unavailable ({e}) and WEFT_NO_NETNS=1");
            None
        }
        Err(e) => panic!(
            "network namespaces are unavailable ({e}): run as root, or set WEFT_NO_NETNS=1 on \
             a machine that cannot have them"
        ),
    }
}

/// Two pods on a bridge reach each other by IP from runtimes inside them, and every namespace
/// is gone once its guard is dropped.
#[test]
fn pods_on_the_bridge_reach_each_other_and_are_deleted_on_drop() {
    let run = format!("weftnt-{}", std::process::id());
    let Some(node) = node(format!("{run}-node"), Ipv4Addr::new(10, 216, 0, 1)) else {
        return;
    };
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 216, 0, 2), Ipv4Addr::new(10, 216, 0, 3));
    let a = node
        .attach(format!("{run}-a"), "va", a_ip, true)
        .expect("pod a");
    let b = node
        .attach(format!("{run}-b"), "vb", b_ip, false)
        .expect("pod b");
    let names = namespaces();
    for ns in [node.netns(), a.name(), b.name()] {
        assert!(names.iter().any(|n| n == ns), "{ns} in {names:?}");
    }
    let in_a = NsRuntime::start(a.name(), "pod a".into()).expect("runtime in a");
    let in_b = NsRuntime::start(b.name(), "pod b".into()).expect("runtime in b");
    // Sockets belong to the namespace of the thread that opens them: spawned tasks run on
    // the namespace's thread (a `Handle::block_on` future would run on this one, the host's).
    // A listener on b's own address exists only inside b's namespace.
    let bind = in_b
        .handle()
        .spawn(tokio::net::TcpListener::bind((b_ip, 0)));
    let listener = in_b
        .handle()
        .block_on(bind)
        .expect("task")
        .expect("bind in b");
    let port = listener.local_addr().expect("port").port();
    let accepted = in_b.handle().spawn(async move {
        let (_, from) = listener.accept().await.expect("accept");
        from
    });
    let connect = async move {
        let limit = std::time::Duration::from_secs(5);
        tokio::time::timeout(limit, tokio::net::TcpStream::connect((b_ip, port))).await
    };
    let connect = in_a.handle().spawn(connect);
    let stream = in_a
        .handle()
        .block_on(connect)
        .expect("task")
        .expect("in time")
        .expect("a reaches b");
    let from = in_b.handle().block_on(accepted).expect("accepted");
    assert_eq!(from.ip(), a_ip, "b saw a's address");
    drop(stream);
    drop((in_a, in_b, a, b));
    let names = namespaces();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&run) && n != node.netns()),
        "{names:?}"
    );
    let node_ns = node.netns().to_owned();
    drop(node);
    assert!(!namespaces().contains(&node_ns), "node namespace deleted");
}
