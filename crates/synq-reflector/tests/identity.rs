//! synq sessions (ids starting with `synq2-`): view ids are proven at JOIN and every
//! message carries the authenticated sender, while Croquet sessions stay as they were.

mod common;

use common::{Client, Ended, start};
use serde_json::json;
use synq_protocol::identity::view_id_for_proof;

fn user(proof: &str) -> serde_json::Value {
    user_with_key(proof, "room-key")
}

fn user_with_key(proof: &str, room: &str) -> serde_json::Value {
    json!({"id": view_id_for_proof(proof), "data": "ENC", "proof": proof, "room": room})
}

#[tokio::test]
async fn a_proven_view_is_announced_without_its_proof_and_its_messages_are_stamped() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "synq2-stamp").await;
    a.join_with(Client::join_args(user("alice-secret"), 1000.0))
        .await;
    let users = a.users().await;
    let joined = &users["joined"][0];
    assert_eq!(joined["id"], view_id_for_proof("alice-secret"));
    assert_eq!(joined["data"], "ENC");
    assert!(
        joined.get("proof").is_none() && joined.get("room").is_none(),
        "the proof and the room key must never be broadcast: {users}"
    );

    a.send_msg("payload").await;
    let m = a.recv_client().await;
    assert_eq!(m.payload, "payload");
    assert_eq!(
        m.rest.last(),
        Some(&json!(view_id_for_proof("alice-secret"))),
        "the reflector appends the authenticated sender"
    );
}

#[tokio::test]
async fn every_message_is_stamped_and_a_stamp_of_the_clients_own_is_refused() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "synq2-forge").await;
    a.join_with(Client::join_args(user("mallory"), 1000.0))
        .await;
    a.users().await;
    a.send_json(json!({"id": "synq2-forge", "action": "SEND", "args": [0, 0, "eA==", 0]}))
        .await;
    let m = a.recv_client().await;
    assert_eq!(m.rest.last(), Some(&json!(view_id_for_proof("mallory"))));
    let victim = view_id_for_proof("victim");
    a.send_json(json!({"id": "synq2-forge", "action": "SEND", "args": [0, 0, "eA==", 0, victim]}))
        .await;
    assert_eq!(a.expect_end().await, Ended::Closed(4102));
}

#[tokio::test]
async fn object_payloads_posing_as_reflector_events_are_refused_in_synq_sessions() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "synq2-pose").await;
    a.join_with(Client::join_args(user("eve"), 1000.0)).await;
    a.users().await;
    let users = json!({"what": "users", "left": [{"id": view_id_for_proof("alice")}]});
    a.send_json(json!({"id": "synq2-pose", "action": "SEND", "args": [0, 0, users, 0]}))
        .await;
    assert_eq!(a.expect_end().await, Ended::Closed(4102));
}

#[tokio::test]
async fn joining_under_someone_elses_view_id_is_refused_with_4107() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "synq2-refuse").await;
    let forged = json!({"id": view_id_for_proof("victim"), "proof": "guess", "room": "room-key"});
    a.send_json(
        json!({"id": "synq2-refuse", "action": "JOIN", "args": Client::join_args(forged, 1000.0)}),
    )
    .await;
    assert_eq!(a.expect_end().await, Ended::Closed(4107));

    let mut b = Client::connect(&server, "synq2-refuse").await;
    b.send_json(json!({"id": "synq2-refuse", "action": "JOIN", "args": Client::join_args(json!("plain-id"), 1000.0)}))
        .await;
    assert_eq!(b.expect_end().await, Ended::Closed(4107));
}

#[tokio::test]
async fn croquet_sessions_are_not_stamped() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "croquet-plain").await;
    a.join("va").await;
    a.send_msg("payload").await;
    let m = a.recv_client().await;
    assert_eq!(m.rest, vec![json!(0)], "the message is forwarded as sent");
}

#[tokio::test]
async fn the_first_join_fixes_the_room_key() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "synq2-key").await;
    a.join_with(Client::join_args(user_with_key("alice", "right"), 1000.0))
        .await;
    // Another key (a wrong password), and no user at all, are refused before the SYNC.
    let mut b = Client::connect(&server, "synq2-key").await;
    b.send_json(json!({"id": "synq2-key", "action": "JOIN",
        "args": Client::join_args(user_with_key("bob", "wrong"), 1000.0)}))
        .await;
    assert_eq!(b.expect_end().await, Ended::Closed(4110));
    let mut c = Client::connect(&server, "synq2-key").await;
    c.send_json(json!({"id": "synq2-key", "action": "JOIN",
        "args": Client::join_args(serde_json::Value::Null, 1000.0)}))
        .await;
    assert_eq!(c.expect_end().await, Ended::Closed(4107));
    // The right key gets in.
    let mut d = Client::connect(&server, "synq2-key").await;
    d.join_with(Client::join_args(user_with_key("dan", "right"), 1000.0))
        .await;
}

#[tokio::test]
async fn sessions_of_an_older_synq_are_refused_as_outdated() {
    let server = start(|_| {}).await;
    let mut a = Client::connect(&server, "synq1-old").await;
    a.send_json(json!({"id": "synq1-old", "action": "JOIN",
        "args": Client::join_args(user("alice"), 1000.0)}))
        .await;
    assert_eq!(a.expect_end().await, Ended::Closed(4100));
}
