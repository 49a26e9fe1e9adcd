//! Rooms outlive model versions: what a model persists in one version is where the
//! room's session of the next version starts, and the files it writes can be read back by
//! any later session of the room, through a real `synq serve` (its file store and SAVE),
//! across a server restart.

use std::path::Path;
use std::time::Duration;

mod common;

use common::Serve;
use serde::{Deserialize, Serialize};
use synq_client::{ClientConfig, Session, SessionEvent, join};
use synq_model::{Cx, Model, Persisted, ViewId};

const PATIENCE: Duration = Duration::from_secs(30);

/// Version 1 of a notes app: persists its notes 300 ms after a change, and writes them to
/// a file `notes-v1/<n>` each time too.
#[derive(Default, Serialize, Deserialize)]
struct NotesV1 {
    notes: Vec<String>,
    saving: bool,
    saves: u32,
}

impl Model for NotesV1 {
    type Input = String;
    /// "Changed", for the views (and the test) to look again.
    type Output = ();
    type Timer = ();
    type ViewData = ();
    const SCHEMA: &'static str = "synq-test-notes/1";

    fn init(_: &mut Cx<'_, Self>) -> Self {
        NotesV1::default()
    }

    fn input(&mut self, cx: &mut Cx<'_, Self>, _: &ViewId, note: String) {
        self.notes.push(note);
        cx.emit(());
        if !self.saving {
            self.saving = true;
            cx.future(300, ());
        }
    }

    fn timer(&mut self, cx: &mut Cx<'_, Self>, _: ()) {
        self.saving = false;
        self.saves += 1;
        cx.persist(&self.notes).expect("notes are JSON");
        cx.write_file(&format!("notes-v1/{}", self.saves), &self.notes)
            .expect("notes are JSON");
    }
}

/// Version 2: notes have authors, and it reads what version 1 persisted.
#[derive(Default, Serialize, Deserialize)]
struct NotesV2 {
    notes: Vec<(String, String)>,
    restored_from: String,
}

impl Model for NotesV2 {
    type Input = String;
    type Output = ();
    type Timer = ();
    type ViewData = ();
    const SCHEMA: &'static str = "synq-test-notes/2";

    fn init(_: &mut Cx<'_, Self>) -> Self {
        NotesV2::default()
    }

    fn init_persisted(cx: &mut Cx<'_, Self>, from: &Persisted) -> Self {
        match from.decode::<Vec<String>>() {
            Ok(texts) if from.schema() == NotesV1::SCHEMA => NotesV2 {
                notes: texts.into_iter().map(|t| (String::new(), t)).collect(),
                restored_from: from.schema().to_owned(),
            },
            _ => Self::init(cx),
        }
    }

    fn input(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, note: String) {
        self.notes.push((from.0.clone(), note));
        cx.emit(());
    }
}

fn serve(data_dir: &Path) -> Serve {
    common::serve_with(data_dir, &["--client-rate-limit", "0", "--no-ai"], &[])
}

fn config(base: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::for_server(base, "synq.test", "notes-room", password);
    // Ticks run the persist timer.
    c.tps = 20.0;
    c.kdf_rounds = 1000;
    c.snapshot_every = None;
    c
}

async fn joined<M: Model<ViewData = ()>>(base: &str) -> Session<M> {
    tokio::time::timeout(PATIENCE, join::<M>(config(base, "pw"), ()))
        .await
        .expect("joined in time")
        .expect("join")
}

/// The next event that `pick` accepts, failing on a failed session.
async fn event<M: Model, R>(
    s: &mut Session<M>,
    what: &str,
    pick: impl Fn(&SessionEvent<M::Output>) -> Option<R>,
) -> R {
    let wait = async {
        loop {
            match s.next_event().await {
                Some(SessionEvent::Failed(e)) => panic!("session failed waiting for {what}: {e}"),
                Some(e) => {
                    if let Some(r) = pick(&e) {
                        return r;
                    }
                }
                None => panic!("session ended waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn a_new_version_of_the_model_starts_from_what_the_old_one_persisted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = serve(dir.path());
    let mut ann = joined::<NotesV1>(&server.base).await;
    for note in ["milk", "eggs"] {
        ann.publish(note.to_owned()).expect("publish");
    }
    // Both uploads, in either order.
    let (mut url, mut file_url) = (None, None);
    while url.is_none() || file_url.is_none() {
        match event(&mut ann, "the uploads", |e| match e {
            SessionEvent::PersistedUploaded { .. } | SessionEvent::FileUploaded { .. } => {
                Some(e.clone())
            }
            _ => None,
        })
        .await
        {
            SessionEvent::PersistedUploaded { url: u } => url = Some(u),
            SessionEvent::FileUploaded { url: u } => file_url = Some(u),
            _ => {}
        }
    }
    let (url, file_url) = (url.unwrap_or_default(), file_url.unwrap_or_default());
    assert!(
        !file_url.contains("notes-v1"),
        "a file's name in the store tells nothing: {file_url}"
    );
    assert!(
        url.contains("/files/apps/synq.test/"),
        "in the app's part of the file store: {url}"
    );
    let saved = ann.read(|m| m.notes.clone()).expect("model");
    assert_eq!(saved, ["milk", "eggs"]);
    // The reflector has recorded it (the SAVE follows the upload) before it is stopped.
    let registered = server.stderr_containing("persistent data registered");
    assert!(registered.contains("/save/"), "{registered}");
    drop(ann);

    // The server restarts (same data directory), and the app is upgraded.
    drop(server);
    let server = serve(dir.path());
    let mut bob = joined::<NotesV2>(&server.base).await;
    let texts = |m: &NotesV2| m.notes.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
    assert_eq!(
        bob.read(texts).expect("model"),
        ["milk", "eggs"],
        "version 2 starts with version 1's notes"
    );
    assert_eq!(
        bob.read(|m| m.restored_from.clone()).as_deref(),
        Some(NotesV1::SCHEMA)
    );
    bob.publish("bread".into()).expect("publish");

    // Version 2 reads the file version 1 wrote, by its name; another name is not there.
    let file = bob.read_file("notes-v1/1").await.expect("the file");
    assert_eq!(file.schema(), NotesV1::SCHEMA);
    assert_eq!(
        file.decode::<Vec<String>>().expect("notes"),
        ["milk", "eggs"]
    );
    assert!(bob.read_file("notes-v1/2").await.is_err());

    // A second participant of version 2, before any snapshot, starts from the same
    // persisted data and replays the rest: the replicas agree.
    let mut cy = joined::<NotesV2>(&server.base).await;
    let wait = async {
        while cy.read(|m| m.notes.len()).unwrap_or(0) < 3 {
            cy.next_event().await.expect("session goes on");
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("cy sees the three notes");
    assert_eq!(cy.read(texts).expect("model"), ["milk", "eggs", "bread"]);
    bob.publish("jam".into()).expect("publish");
    for s in [&mut bob, &mut cy] {
        let wait = async {
            while s.read(|m| m.notes.len()).unwrap_or(0) < 4 {
                s.next_event().await.expect("session goes on");
            }
        };
        tokio::time::timeout(PATIENCE, wait).await.expect("jam");
    }
    assert_eq!(bob.hash(), cy.hash(), "the two replicas of version 2 agree");
}
