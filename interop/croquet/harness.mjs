#!/usr/bin/env node
// Interop harness: real @croquet/croquet 2.0.4 Node clients against a reflector "box".
//
//   node harness.mjs http://127.0.0.1:PORT/ [options]
//   node harness.mjs http://127.0.0.1:P1/,http://127.0.0.1:P2/,… [options]
//
// Several comma-separated boxes are the nodes of one cluster: client k uses box k mod n, so
// the clients of the one session are spread over the nodes.
//
// The box URL is what a Croquet app passes as `box`: the client derives the reflector
// (ws://HOST:PORT/reflector/<sessionId>) and the file store (http://HOST:PORT/files/...).
// Each client is a separate Node process (client.mjs) so every Session.join has its own
// library instance, exactly as separate users would.
//
// Scenario (every step has a deadline; the whole run is bounded by --timeout):
//   1. A, B, C join (viewData {name}); all three send increments concurrently; their
//      replicated histories must become identical and contain every increment exactly once.
//   2. A snapshot is taken and uploaded (triggered by the reflector's REQU, by the clients
//      themselves, or — after a grace period, unless --snapshot=requ — forced with Croquet's
//      own debug hook); the SNAP url must be downloadable from the file store (CRQ1 bytes).
//   3. A, B, C send more increments (messages after the snapshot, to be replayed).
//   4. D joins late: its SYNC must carry the snapshot url plus the messages since; it must not
//      run init(); its state must equal the others'.
//   5. All four send concurrently again; all must agree.
//   6. B leaves: A, C, D must record B's view-exit with B's viewData; all joins were recorded
//      with viewData names.
// Exit code 0 only if every check holds. The last stdout line is a one-line JSON summary.
//
// Options:
//   --timeout SECONDS     overall deadline (default 60)
//   --incs N              increments per client and phase (default 10)
//   --snapshot MODE       auto (default): wait for a REQU/CPU-triggered snapshot, then force one;
//                         requ: never force (the reflector's REQU must cause it);
//                         force: force as soon as the session is old enough
//   --requ-grace SECONDS  in auto mode, how long to wait for an unforced snapshot (default 3)
//   --trickle-ms MS       while waiting for the snapshot each client sends one increment per MS (100)
//   --expect-requ         fail unless the clients received at least one REQU
//   --verbose             stream the clients' console output to stderr

import { fork } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";

const HERE = dirname(fileURLToPath(import.meta.url));
const T0 = Date.now();

// ------------------------------------------------------------------------------ arguments
const argv = process.argv.slice(2);
const opts = { timeout: 60, incs: 10, trickleMs: 100, snapshot: "auto", requGrace: 3, expectRequ: false, verbose: false };
let box = null;
for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(`missing value for ${a}`); return argv[++i]; };
    if (a === "--timeout") opts.timeout = Number(val());
    else if (a === "--incs") opts.incs = Number(val());
    else if (a === "--snapshot") opts.snapshot = val();
    else if (a === "--trickle-ms") opts.trickleMs = Number(val());
    else if (a === "--requ-grace") opts.requGrace = Number(val());
    else if (a === "--expect-requ") opts.expectRequ = true;
    else if (a === "--verbose") opts.verbose = true;
    else if (a.startsWith("--")) usage(`unknown option ${a}`);
    else if (!box) box = a;
    else usage(`unexpected argument ${a}`);
}
if (!box) usage("missing box URL");
const boxes = box.split(",").map(b => b.endsWith("/") ? b : b + "/");
for (const b of boxes) if (!/^https?:\/\//.test(b)) usage(`box URL must be http(s)://..., got ${b}`);
if (!["auto", "requ", "force"].includes(opts.snapshot)) usage(`bad --snapshot ${opts.snapshot}`);

function usage(msg) {
    console.error(`harness: ${msg}\nusage: node harness.mjs http://HOST:PORT/ [--timeout S] [--incs N] [--snapshot auto|requ|force] [--requ-grace S] [--expect-requ] [--verbose]`);
    process.exit(2);
}

if (!existsSync(join(HERE, "node_modules", "@croquet", "croquet"))) {
    console.error(`harness: ${join(HERE, "node_modules")} is missing: run \`npm ci --ignore-scripts\` in ${HERE}`);
    process.exit(2);
}

const DEADLINE = T0 + opts.timeout * 1000;
const SESSION = `interop-${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`;
const APP_ID = "io.synq.interop";
const PASSWORD = randomBytes(9).toString("base64url");

// ------------------------------------------------------------------------------ bookkeeping
const checks = [];
const info = { boxes, session: SESSION };
function check(name, ok, detail) {
    checks.push({ name, ok: !!ok, ...(detail === undefined ? {} : { detail }) });
    log(`${ok ? "ok  " : "FAIL"} ${name}${!ok && detail !== undefined ? ": " + JSON.stringify(detail) : ""}`);
    return !!ok;
}
function log(msg) {
    process.stderr.write(`[harness +${((Date.now() - T0) / 1000).toFixed(1)}s] ${msg}\n`);
}
class Failure extends Error {}

// ------------------------------------------------------------------------------ clients
const clients = new Map();

class Client {
    constructor(name) {
        // A, B, C, D… over the boxes in turn.
        const box = boxes[clients.size % boxes.length];
        this.name = name;
        this.output = [];
        this.last = null;         // last state report
        this.joined = null;       // the "joined" report
        this.left = null;         // the "left" report (final state before leaving)
        this.sent = 0;
        this.errors = [];
        this.exit = null;
        this.waiters = [];        // [{type, resolve}]
        this.proc = fork(join(HERE, "client.mjs"), [], {
            cwd: HERE,
            stdio: ["ignore", "pipe", "pipe", "ipc"],
            env: {
                ...process.env,
                CLIENT_NAME: name,
                CROQUET_BOX: box,
                CROQUET_APP_ID: APP_ID,
                CROQUET_SESSION: SESSION,
                CROQUET_PASSWORD: PASSWORD,
            },
        });
        const capture = stream => stream.on("data", chunk => {
            for (const line of chunk.toString().split("\n")) {
                if (!line) continue;
                this.output.push(line);
                if (this.output.length > 400) this.output.shift();
                if (opts.verbose) process.stderr.write(`  [${name}] ${line}\n`);
            }
        });
        capture(this.proc.stdout);
        capture(this.proc.stderr);
        this.proc.on("message", msg => this.onMessage(msg));
        this.proc.on("exit", (code, signal) => {
            this.exit = { code, signal };
            if (!this.left && !this.told_exit) this.errors.push(`process exited (code ${code}, signal ${signal})`);
            for (const w of this.waiters.splice(0)) w.reject(new Failure(`${name} exited`));
        });
        clients.set(name, this);
    }

    onMessage(msg) {
        if (msg.type === "state" || msg.type === "joined" || msg.type === "left") this.last = msg;
        if (msg.type === "joined") this.joined = msg;
        if (msg.type === "left") this.left = msg;
        if (msg.type === "sent") this.sent = msg.total;
        if (msg.type === "error") { this.errors.push(msg.error); log(`${this.name} reported error: ${msg.error}`); }
        const i = this.waiters.findIndex(w => w.type === msg.type);
        if (i >= 0) this.waiters.splice(i, 1)[0].resolve(msg);
    }

    send(cmd, extra = {}) {
        if (this.proc.connected) this.proc.send({ cmd, ...extra });
    }

    next(type) {
        if (this.exit) return Promise.reject(new Failure(`${this.name} has exited`));
        return new Promise((resolve, reject) => this.waiters.push({ type, resolve, reject }));
    }

    async state(what) {
        const p = this.next("state");
        this.send("state");
        return withDeadline(p, what);
    }

    get alive() { return !this.exit && !this.left; }
}

function withDeadline(promise, what) {
    const left = DEADLINE - Date.now();
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Failure(`overall timeout while waiting for ${what}`)), Math.max(0, left)); }),
    ]).finally(() => clearTimeout(timer));
}

/** Poll the given clients' states until `cond(states)` is truthy (returns it), or fail at the deadline. */
async function waitFor(what, list, cond, { everyMs = 150, until = DEADLINE } = {}) {
    for (;;) {
        const states = await Promise.all(list.map(c => c.state(what)));
        for (const c of list) if (c.errors.length) throw new Failure(`${c.name} failed: ${c.errors.join("; ")}`);
        const result = cond(states);
        if (result) return result;
        if (until < DEADLINE && Date.now() > until) return null;
        if (Date.now() > DEADLINE) throw new Failure(`overall timeout while waiting for ${what}`);
        await new Promise(r => setTimeout(r, everyMs));
    }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const allAgree = states => states.every(s => s.history && same(s.history, states[0].history));
const incsIn = history => history.filter(e => e[0] === "inc");

async function sendIncs(list, count) {
    const done = list.map(c => c.next("sent"));
    for (const c of list) c.send("inc", { count, spacingMs: 10 });
    await withDeadline(Promise.all(done), "increments to be sent");
}

/** wait until the clients agree on a history containing every increment sent so far */
async function waitAgreement(what, list) {
    const expectedIncs = [...clients.values()].reduce((n, c) => n + c.sent, 0);
    const states = await waitFor(what, list, s => (allAgree(s) && incsIn(s[0].history).length >= expectedIncs ? s : null));
    check(`${what}: ${list.map(c => c.name).join(",")} agree on identical history`, true);
    const incs = incsIn(states[0].history);
    // every increment sent so far by each client appears exactly once, in each sender's order
    const perSender = {};
    for (const [, by, n] of incs) (perSender[by] ||= []).push(n);
    const expected = {};
    for (const c of clients.values()) if (c.sent) expected[c.name] = [...Array(c.sent).keys()];
    check(`${what}: every increment delivered exactly once, in send order`, same(sortKeys(perSender), sortKeys(expected)),
        { got: perSender, expected });
    check(`${what}: count equals number of increments (${expectedIncs})`, states.every(s => s.count === expectedIncs), states.map(s => s.count));
    return states;
}
const sortKeys = o => Object.fromEntries(Object.entries(o).sort());

// ------------------------------------------------------------------------------ scenario
async function scenario() {
    const K = opts.incs;

    // 1. three clients join
    const [A, B, C] = ["A", "B", "C"].map(n => new Client(n));
    await withDeadline(Promise.all([A, B, C].map(c => c.next("joined"))), "A, B, C to join");
    log(`A, B, C joined (${[A, B, C].map(c => `${c.name}=${c.joined.viewId} in ${c.joined.joinMs}ms`).join(", ")})`);
    check("A, B, C joined with distinct viewIds", new Set([A, B, C].map(c => c.joined.viewId)).size === 3);

    // all three send concurrently
    await sendIncs([A, B, C], K);
    await waitAgreement("phase 1", [A, B, C]);

    // 2. snapshot
    const snap = await obtainSnapshot([A, B, C]);
    await waitAgreement("snapshot phase", [A, B, C]);
    info.snapshot = snap;
    const dl = await fetch(snap.url).catch(e => ({ ok: false, status: String(e) }));
    const body = dl.ok ? Buffer.from(await dl.arrayBuffer()) : Buffer.alloc(0);
    check("snapshot file downloadable from the file store (GET SNAP url)", dl.ok && body.length > 52,
        { url: snap.url, status: dl.status, bytes: body.length });
    check("snapshot file is an encrypted Croquet snapshot (CRQ1)", body.subarray(0, 4).toString() === "CRQ1");
    info.snapshot.bytes = body.length;

    // 3. messages after the snapshot (the late joiner must replay these)
    await sendIncs([A, B, C], K);
    await waitAgreement("phase 2", [A, B, C]);

    // 4. late joiner
    const D = new Client("D");
    await withDeadline(D.next("joined"), "D to join");
    log(`D joined as ${D.joined.viewId} in ${D.joined.joinMs}ms`);
    const dsync = D.joined.wire.syncs[0];
    info.lateJoinSync = dsync;
    const snapUrls = new Set([A, B, C].flatMap(c => c.last.wire.snaps.map(s => s.url)));
    check("late joiner's SYNC carries an uploaded snapshot url", dsync && snapUrls.has(dsync.url), { sync: dsync, snaps: [...snapUrls] });
    check("late joiner's SYNC has snapshotTime/snapshotSeq", dsync && typeof dsync.snapshotTime === "number" && typeof dsync.snapshotSeq === "number", dsync);
    check("late joiner's SYNC replays the messages since the snapshot", dsync && dsync.messages > 0, dsync);
    check("late joiner did not run init() (state came from the snapshot)", D.joined.initRanHere === false);
    await waitAgreement("late join", [A, B, C, D]);

    // 5. everybody sends concurrently
    await sendIncs([A, B, C, D], K);
    const states5 = await waitAgreement("phase 3", [A, B, C, D]);

    // 6. view-join / view-exit with viewData
    const ids = Object.fromEntries([A, B, C, D].map(c => [c.name, c.joined.viewId]));
    const joins = states5[0].history.filter(e => e[0] === "join");
    for (const c of [A, B, C, D]) {
        check(`view-join of ${c.name} reached the model with viewData {name: "${c.name}"}`,
            joins.some(e => e[1] === ids[c.name] && e[2] === c.name), joins);
    }
    B.send("leave");
    await withDeadline(B.next("left"), "B to leave");
    const rest = [A, C, D];
    const exited = await waitFor("B's view-exit", rest,
        s => allAgree(s) && s[0].history.some(e => e[0] === "exit" && e[1] === ids.B) ? s : null);
    const exitEntry = exited[0].history.find(e => e[0] === "exit" && e[1] === ids.B);
    check(`view-exit of B reached the model with viewData {name: "B"}`, exitEntry[2] === "B", exitEntry);
    check("no other view-exit happened", exited[0].history.filter(e => e[0] === "exit").length === 1, exited[0].history.filter(e => e[0] === "exit"));
    check("A, C, D agree after B left", allAgree(exited));
    info.historyLength = exited[0].history.length;
    info.finalCount = exited[0].count;

    // wire-level sanity over the whole run
    const finals = [...exited, B.left];
    const byName = Object.fromEntries(finals.map((s, i) => [[...rest, B][i].name, s]));
    for (const [name, s] of Object.entries(byName)) {
        check(`${name}: one JOIN, one SYNC, no reconnect`, s.wire.joins === 1 && s.wire.syncs.length === 1, { joins: s.wire.joins, syncs: s.wire.syncs.length });
        check(`${name}: no gap in RECV sequence numbers`, s.wire.recvSeqGaps === 0, s.wire.recvSeqGaps);
        check(`${name}: socket never closed by the reflector`, s.wire.closes.length === 0, s.wire.closes);
    }
    info.requReceived = Object.fromEntries(Object.entries(byName).map(([n, s]) => [n, s.wire.requ]));
    const anyRequ = Object.values(byName).some(s => s.wire.requ > 0);
    if (opts.expectRequ) check("clients received REQU from the reflector (--expect-requ)", anyRequ, info.requReceived);
    info.firstSync = A.joined.wire.syncs[0];

    // everybody leaves; the reflector must answer the client's Close frame (RFC 6455 §5.5.1)
    for (const c of rest) c.send("leave");
    await withDeadline(Promise.all(rest.map(c => c.next("left"))), "A, C, D to leave");
    for (const c of [A, B, C, D]) {
        check(`${c.name}: leaving closed the socket cleanly (close handshake answered, code 1000)`,
            c.left.leaveClose && c.left.leaveClose.code === 1000, c.left.leaveClose);
    }
}

/** Wait for a SNAP from any client (REQU- or CPU-triggered), forcing one if allowed. */
async function obtainSnapshot(list) {
    const firstSnap = states => {
        const snaps = states.flatMap((s, i) => s.wire.snaps.filter(x => !x.dissident).map(x => ({ ...x, by: list[i].name })));
        snaps.sort((a, b) => a.at - b.at);
        return snaps[0] || null;
    };
    let forcedAt = null;
    let trigger = null;
    let oldEnoughAt = null; // when the session got older than the VM's 5 s minimum poll gap
    // Keep a trickle of increments flowing while waiting: a reflector asks for snapshots (REQU)
    // as messages arrive, and the clients only act on it once the session is > 5 s old.
    for (const c of list) c.send("trickle", { everyMs: opts.trickleMs });
    // Croquet's VM ignores snapshot polls in the first 5 s of session time (SNAPSHOT_MIN_POLL_GAP
    // after lastSnapshotPoll = 0), so forcing only makes sense once the session is older.
    const snap = await waitFor("a snapshot upload (SNAP)", list, states => {
        info.requBeforeSnapshot = Object.fromEntries(states.map((x, i) => [list[i].name, x.wire.requ]));
        const s = firstSnap(states);
        if (s) {
            trigger = forcedAt ? "forced" : (states.some(x => x.wire.requ > 0) ? "requ" : "client");
            return s;
        }
        if (opts.snapshot === "requ") return null;
        const vmTime = Math.min(...states.map(x => x.vmTime));
        if (vmTime <= 5200) return null;
        oldEnoughAt ||= Date.now();
        const graceOver = opts.snapshot === "force" || Date.now() - oldEnoughAt > opts.requGrace * 1000;
        // re-force every 6 s: the reflector debounces polls for 5 s, the VM rejects polls < 5 s apart
        if (graceOver && (!forcedAt || Date.now() - forcedAt > 6000)) {
            log(`no snapshot yet at session time ${vmTime}; forcing one via A (Controller#requestDebugSnapshot)`);
            forcedAt = Date.now();
            list[0].send("snapshot");
        }
        return null;
    }, { everyMs: 200 });
    const stopped = list.map(c => c.next("sent"));
    for (const c of list) c.send("untrickle");
    await withDeadline(Promise.all(stopped), "the trickle to stop");
    check("a snapshot was taken and announced (SNAP)", !!snap, snap);
    log(`snapshot by ${snap.by} (${trigger}): ${snap.url}`);
    return { url: snap.url, time: snap.time, seq: snap.seq, by: snap.by, trigger };
}

// ------------------------------------------------------------------------------ run
function dumpClientOutput() {
    for (const c of clients.values()) {
        process.stderr.write(`----- output of client ${c.name} (last ${Math.min(c.output.length, 80)} lines) -----\n`);
        for (const line of c.output.slice(-80)) process.stderr.write(`  ${line}\n`);
        if (c.errors.length) process.stderr.write(`  errors: ${c.errors.join("\n  ")}\n`);
    }
}

async function cleanup() {
    for (const c of clients.values()) { c.told_exit = true; c.send("exit"); }
    const until = Date.now() + 3000;
    while ([...clients.values()].some(c => !c.exit) && Date.now() < until) await new Promise(r => setTimeout(r, 50));
    for (const c of clients.values()) if (!c.exit) c.proc.kill("SIGKILL");
}

let failure = null;
const overall = setTimeout(() => {
    // last resort if something hangs outside a deadline-aware wait
    log("overall timeout: killing clients");
    for (const c of clients.values()) if (!c.exit) c.proc.kill("SIGKILL");
    emit(new Failure("overall timeout"));
    process.exit(1);
}, opts.timeout * 1000 + 5000);

function emit(err) {
    const failed = checks.filter(c => !c.ok).map(c => c.name);
    if (err) failed.push(`error: ${err.message}`);
    const ok = failed.length === 0;
    const summary = {
        ok,
        checks: checks.length,
        passed: checks.filter(c => c.ok).length,
        failed,
        durationMs: Date.now() - T0,
        ...info,
    };
    if (!ok) dumpClientOutput();
    process.stdout.write(JSON.stringify(summary) + "\n");
    return ok;
}

try {
    await scenario();
} catch (e) {
    failure = e;
    log(`aborted: ${e instanceof Failure ? e.message : e.stack}`);
}
await cleanup();
clearTimeout(overall);
process.exit(emit(failure) ? 0 : 1);
