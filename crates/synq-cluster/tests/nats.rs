//! `NatsCluster` against a real `nats-server -js` (Debian's package, installed by
//! scripts/test.sh): the journal a claim opens, its fence, and the retention sweep.

// Not model code: the test starts a server and reads its log.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use synq_cluster::testing::NatsServer;
use synq_cluster::{ClusterConfig, NatsCluster};
use synq_reflector::cluster::{Cluster, ClusterError, Placement};
use synq_reflector::journal::Records;

async fn node(nats: &NatsServer, name: &str) -> NatsCluster {
    NatsCluster::connect(ClusterConfig {
        nats_url: nats.url.clone(),
        node: name.into(),
        advertise: format!("http://{name}.invalid:9091"),
        token: "a-token-of-sixteen-chars".into(),
        lease_ttl: Duration::from_millis(1500),
        replicas: 1,
        prefix: "synq".into(),
        retention: None,
        max_bytes: 0,
    })
    .await
    .expect("connect")
}

fn message(seq: u32, text: &str) -> Records {
    let mut r = Records::default();
    r.message(&format!("[{},{seq},\"{text}\"]", 100 * seq));
    r
}

#[tokio::test]
async fn a_claim_fences_the_journal_against_the_previous_owner() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut first = a.claim("room").await.expect("a claims");
    assert_eq!(
        b.placement("room").await.expect("placement"),
        Placement::Owner {
            url: "http://a.invalid:9091".into()
        }
    );
    assert!(matches!(
        b.claim("room").await,
        Err(ClusterError::OwnedElsewhere)
    ));
    first
        .journal
        .append(&mut message(1, "one"), Instant::now())
        .await
        .expect("the owner appends");
    // a gives the lease up but keeps its journal (as a node that believes it still owns
    // the session would), and b takes the session.
    let stale_journal = first.journal;
    drop(first.lease);
    let taken = loop {
        match b.claim("room").await {
            Ok(c) => break c,
            // The release is on its way.
            Err(ClusterError::OwnedElsewhere) => tokio::task::yield_now().await,
            Err(e) => panic!("claim: {e}"),
        }
    };
    assert_eq!(
        taken.recovered.messages.len(),
        1,
        "b resumes from a's journal"
    );
    let mut stale = stale_journal;
    let refused = stale.append(&mut message(2, "stale"), Instant::now()).await;
    assert!(
        matches!(refused, Err(synq_reflector::journal::JournalError::Lost(_))),
        "the former owner cannot append after the claim: {refused:?}"
    );
}

#[tokio::test]
async fn the_sweep_deletes_journals_nobody_runs_and_keeps_the_others() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    for room in ["old", "running"] {
        let mut c = a.claim(room).await.expect("claim");
        c.journal
            .append(&mut message(1, room), Instant::now())
            .await
            .expect("append");
        if room == "running" {
            // Still held: not swept, however old.
            std::mem::forget(c.lease);
        }
    }
    // The released lease's key is deleted in the background: wait until it is.
    while a.is_live("old").await {
        tokio::task::yield_now().await;
    }
    assert_eq!(a.sweep(Duration::ZERO).await, 1);
    assert!(!a.knows("old").await);
    assert!(a.knows("running").await);
}
