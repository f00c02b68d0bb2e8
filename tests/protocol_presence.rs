//! PROTOCOL.md "Presence": online/offline events, leave vs drop, the grace period, who.
mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn presence(room: &str, user: &str, state: &str) -> Value {
    json!({"type":"presence","room":room,"user":user,"state":state})
}

fn presence_frames(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|v| v["type"] == "presence").collect()
}

#[test]
fn online_goes_to_others_not_to_the_subject() {
    let s = TestServer::start(&["--presence-grace", "5s"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    let mut c = s.register("carol");
    a.join("r");
    c.join("elsewhere");
    let j = b.join("r");
    assert_eq!(j.members(), names(&["alice", "bob"]));
    assert_eq!(a.expect("presence"), presence("r", "bob", "online"));
    let own = b.barrier();
    assert!(
        presence_frames(&own).is_empty(),
        "no presence event about oneself: {own:?}"
    );
    let other = c.barrier();
    assert!(
        other.is_empty(),
        "presence only goes to the room's members: {other:?}"
    );
}

#[test]
fn leave_announces_offline_at_once() {
    // A long grace period: `leave` must not wait for it.
    let s = TestServer::start(&["--presence-grace", "30s"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("r");
    b.join("r");
    a.expect("presence");
    let t0 = Instant::now();
    b.leave("r");
    let p = a.recv_json(T);
    assert_eq!(p, presence("r", "bob", "offline"));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "offline after leave took {:?}",
        t0.elapsed()
    );
    assert_eq!(a.who("r"), names(&["alice"]));
    let own = b.barrier();
    assert!(
        presence_frames(&own).is_empty(),
        "bob gets no presence about himself: {own:?}"
    );
}

#[test]
fn drop_without_leave_announces_offline_only_after_the_grace_period() {
    let s = TestServer::start(&["--presence-grace", "1500ms"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    // Authenticate carol up front: argon2 is slow and the grace period is short.
    let mut c = s.register("carol");
    a.join("r");
    b.join("r");
    a.expect("presence");
    let t0 = Instant::now();
    b.drop_tcp();

    // During the grace period bob still counts as online: who and a fresh join list him.
    assert_eq!(
        a.who("r"),
        names(&["alice", "bob"]),
        "within the grace period the user is still online"
    );
    let j = c.join("r");
    assert_eq!(
        j.members(),
        names(&["alice", "bob", "carol"]),
        "joined.members during bob's grace"
    );
    assert_eq!(a.expect("presence"), presence("r", "carol", "online"));

    // Proving "not before the grace period" needs to wait through most of it.
    let early = a.collect_for(ms(1000).saturating_sub(t0.elapsed()));
    assert!(
        presence_frames(&early).is_empty(),
        "offline announced before the grace period ended: {early:?}"
    );

    let (p, skipped) = a.wait_for(Duration::from_secs(6), |v| v["type"] == "presence");
    let elapsed = t0.elapsed();
    assert_eq!(p, presence("r", "bob", "offline"), "skipped: {skipped:?}");
    assert!(
        elapsed >= ms(1300),
        "offline came after {elapsed:?}, before the 1.5 s grace"
    );
    assert_eq!(
        c.wait_for(T, |v| v["type"] == "presence").0,
        presence("r", "bob", "offline")
    );
    assert_eq!(a.who("r"), names(&["alice", "carol"]));
}

#[test]
fn websocket_close_without_leave_also_waits_for_the_grace_period() {
    let s = TestServer::start(&["--presence-grace", "1s"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("r");
    b.join("r");
    a.expect("presence");
    let t0 = Instant::now();
    b.close();
    // Waiting through most of the grace period to prove offline is not sent early.
    let early = a.collect_for(ms(700).saturating_sub(t0.elapsed()));
    assert!(
        presence_frames(&early).is_empty(),
        "offline before the grace period: {early:?}"
    );
    let (p, _) = a.wait_for(Duration::from_secs(5), |v| v["type"] == "presence");
    assert_eq!(p, presence("r", "bob", "offline"));
}

#[test]
fn rejoin_within_the_grace_period_sends_neither_offline_nor_online() {
    let s = TestServer::start(&["--presence-grace", "2s"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("r");
    b.join("r");
    a.expect("presence");
    let token = b.token.clone();
    let t0 = Instant::now();
    b.drop_tcp();
    let mut b2 = s.resume(&token);
    let j = b2.join("r");
    assert!(
        t0.elapsed() < ms(1500),
        "reconnect took too long for this test: {:?}",
        t0.elapsed()
    );
    assert_eq!(j.members(), names(&["alice", "bob"]));
    // Watch past the end of the original grace period: no presence at all about bob.
    let frames = a.collect_for(ms(3000));
    assert!(
        presence_frames(&frames).is_empty(),
        "rejoin within grace: neither offline nor online, got {frames:?}"
    );
    assert_eq!(a.who("r"), names(&["alice", "bob"]));
    // And bob's new connection is fully live.
    let (ack, _) = b2.say("r", "back");
    assert_eq!(a.expect("message")["id"], ack["id"]);
}

#[test]
fn online_while_any_connection_has_joined() {
    let s = TestServer::start(&["--presence-grace", "30s"]);
    let mut a = s.register("alice");
    let mut b1 = s.register("bob");
    let mut b2 = s.login("bob", PASSWORD);
    a.join("r");
    b1.join("r");
    assert_eq!(a.expect("presence"), presence("r", "bob", "online"));
    b2.join("r");
    let extra = a.barrier();
    assert!(
        extra.is_empty(),
        "a second connection of an online user is not a new online: {extra:?}"
    );
    b1.leave("r");
    let extra = a.barrier();
    assert!(
        extra.is_empty(),
        "bob is still online through b2: {extra:?}"
    );
    assert_eq!(a.who("r"), names(&["alice", "bob"]));
    b2.leave("r");
    assert_eq!(
        a.expect("presence"),
        presence("r", "bob", "offline"),
        "the last connection left"
    );
}

#[test]
fn leave_by_one_connection_while_another_dropped_in_grace() {
    // bob has two connections; one drops (grace starts for it), the other then leaves: bob's
    // last joined connection is gone only when the grace of the dropped one ends, or at once
    // with the leave. Either way exactly one offline must be announced, and no online.
    let s = TestServer::start(&["--presence-grace", "1s"]);
    let mut a = s.register("alice");
    let mut b1 = s.register("bob");
    let mut b2 = s.login("bob", PASSWORD);
    a.join("r");
    b1.join("r");
    b2.join("r");
    assert_eq!(a.expect("presence"), presence("r", "bob", "online"));
    b1.drop_tcp();
    b2.leave("r");
    // Wait past the grace period to see everything that will be announced.
    let frames = a.collect_for(ms(2500));
    let p = presence_frames(&frames);
    assert_eq!(
        p,
        vec![&presence("r", "bob", "offline")],
        "exactly one offline: {frames:?}"
    );
}

#[test]
fn who_lists_members_including_the_caller() {
    let s = TestServer::start(&[]);
    let mut a = s.register("Alice");
    let mut b = s.register("bob");
    a.join("r");
    assert_eq!(a.who("r"), names(&["Alice"]));
    b.join("r");
    a.expect("presence");
    assert_eq!(a.who("r"), names(&["Alice", "bob"]));
    assert_eq!(b.who("r"), names(&["Alice", "bob"]));
    let mut b_other = s.login("BOB", PASSWORD);
    b_other.join("r");
    assert_eq!(
        a.who("r"),
        names(&["Alice", "bob"]),
        "a user with two connections is listed once"
    );
    b.send_json(&json!({"type":"who","room":"nope"}));
    let e = b.expect_error("not_joined");
    assert_eq!(e["ref"], "who");
}

#[test]
fn presence_is_per_room() {
    let s = TestServer::start(&["--presence-grace", "30s"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("x");
    a.join("y");
    b.join("x");
    assert_eq!(a.expect("presence"), presence("x", "bob", "online"));
    b.join("y");
    assert_eq!(a.expect("presence"), presence("y", "bob", "online"));
    b.leave("x");
    assert_eq!(a.expect("presence"), presence("x", "bob", "offline"));
    assert_eq!(a.who("y"), names(&["alice", "bob"]), "still online in y");
    let extra = a.barrier();
    assert!(extra.is_empty(), "{extra:?}");
}

#[test]
fn a_drop_announces_offline_in_every_room_after_the_grace_period() {
    let s = TestServer::start(&["--presence-grace", "500ms"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    for r in ["x", "y"] {
        a.join(r);
        b.join(r);
        assert_eq!(a.expect("presence"), presence(r, "bob", "online"));
    }
    b.drop_tcp();
    let mut rooms: Vec<String> = (0..2)
        .map(|_| {
            let (p, _) = a.wait_for(Duration::from_secs(5), |v| v["type"] == "presence");
            assert_eq!(p["user"], "bob");
            assert_eq!(p["state"], "offline");
            p["room"].as_str().unwrap().to_string()
        })
        .collect();
    rooms.sort();
    assert_eq!(rooms, vec!["x", "y"]);
}

#[test]
fn a_graceful_restart_continues_the_grace_period() {
    // A restart drops every connection without `leave`: the grace period runs on across it, so
    // a reconnect storm costs no `online` events, and whoever does not come back goes offline
    // when it ends, as if the connection had dropped without the restart.
    let mut s = TestServer::start(&["--presence-grace", "3s"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    let mut c = s.register("carol");
    for client in [&mut a, &mut b, &mut c] {
        client.join("r");
    }
    let (ta, tb) = (a.token.clone(), b.token.clone());
    s.sigterm();
    s.wait_exit(T);
    s.restart();
    let t0 = Instant::now();
    let mut a2 = s.resume(&ta);
    let j = a2.join("r");
    assert_eq!(
        j.members(),
        names(&["alice", "bob", "carol"]),
        "within the grace period the dropped users still count as online"
    );
    let mut b2 = s.resume(&tb);
    b2.join("r");
    assert!(
        t0.elapsed() < ms(2000),
        "reconnecting took too long for this test: {:?}",
        t0.elapsed()
    );
    // Through the end of the grace period: carol goes offline, bob's return is not news.
    let frames = a2.collect_for(ms(3500));
    assert_eq!(
        presence_frames(&frames),
        vec![&presence("r", "carol", "offline")],
        "only carol, who did not come back, is announced: {frames:?}"
    );
    assert_eq!(a2.who("r"), names(&["alice", "bob"]));
}

#[test]
fn after_a_crash_presence_starts_afresh() {
    let mut s = TestServer::start(&["--presence-grace", "1s"]);
    let mut a = s.register("alice");
    let mut b = s.register("bob");
    a.join("r");
    b.join("r");
    let ta = a.token.clone();
    s.kill9();
    s.restart();
    let mut a2 = s.resume(&ta);
    let members = a2.join("r").members();
    if s.is_cluster() {
        // The crashed nodes' users stay online in Redis for one grace period, then go.
        a2.wait_for(Duration::from_secs(10), |v| {
            *v == presence("r", "bob", "offline")
        });
        assert_eq!(a2.who("r"), names(&["alice"]));
    } else {
        assert_eq!(members, names(&["alice"]), "kill -9 keeps no presence");
    }
    let mut b2 = s.register("bobby");
    b2.join("r");
    assert_eq!(a2.expect("presence"), presence("r", "bobby", "online"));
}
