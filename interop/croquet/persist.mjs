#!/usr/bin/env node
// Persistence interop: real @croquet/croquet 2.0.4 Node clients of two code versions of one
// app against a reflector "box". Data saved by version 1 (Model#persistSession: voted on,
// uploaded to the box's file store, announced with SAVE) must be handed to version 2's
// session (SYNC `url` + `persisted: true`) and reach its root model's init(options, persisted);
// a second version-2 client joining before any snapshot must start from the same data.
//
//   node persist.mjs http://127.0.0.1:PORT/ [--phase v1|v2|both] [--state FILE] [options]
//
// --phase v1 runs version 1 and writes what it saved to --state FILE; --phase v2 reads it
// and checks version 2 (in between, the caller may restart the reflector); both (default)
// runs one after the other. Clients are separate Node processes (persist-client.mjs).
//
// Version 1: A1, B1 join, send increments, agree; A1 asks the model to persistSession(); a
// client uploads the data (PUT …/files/apps/<appId>/<persistentId>/save/<hash>) and sends
// SAVE; the file is downloadable; A1, B1 leave.
// Version 2: A2 joins a new session (other code, same appId/name/password): its SYNC names
// the saved data (persisted: true), its init() gets version 1's data; A2 sends increments
// (the session now has messages), then B2 joins: its SYNC must name the same data, it runs
// init() with it and replays A2's messages, and A2, B2 agree; both send more and agree.
//
// Options: --timeout S (60), --incs N (5), --session NAME, --password PW (default: random),
// --verbose. Exit code 0 only if every check holds; the last stdout line is a JSON summary.

import { fork } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";

const HERE = dirname(fileURLToPath(import.meta.url));
const T0 = Date.now();

const argv = process.argv.slice(2);
const opts = { timeout: 60, incs: 5, phase: "both", state: null, session: null, password: null, verbose: false };
let box = null;
for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(`missing value for ${a}`); return argv[++i]; };
    if (a === "--timeout") opts.timeout = Number(val());
    else if (a === "--incs") opts.incs = Number(val());
    else if (a === "--phase") opts.phase = val();
    else if (a === "--state") opts.state = val();
    else if (a === "--session") opts.session = val();
    else if (a === "--password") opts.password = val();
    else if (a === "--verbose") opts.verbose = true;
    else if (a.startsWith("--")) usage(`unknown option ${a}`);
    else if (!box) box = a;
    else usage(`unexpected argument ${a}`);
}
if (!box || !/^https?:\/\//.test(box)) usage("missing or bad box URL (http(s)://HOST:PORT/)");
if (!box.endsWith("/")) box += "/";
if (!["v1", "v2", "both"].includes(opts.phase)) usage(`bad --phase ${opts.phase}`);
if (opts.phase !== "both" && !opts.state) usage("--phase v1|v2 needs --state FILE");

function usage(msg) {
    console.error(`persist: ${msg}\nusage: node persist.mjs http://HOST:PORT/ [--phase v1|v2|both] [--state FILE] [--session NAME] [--password PW] [--timeout S] [--incs N] [--verbose]`);
    process.exit(2);
}

if (!existsSync(join(HERE, "node_modules", "@croquet", "croquet"))) {
    console.error(`persist: ${join(HERE, "node_modules")} is missing: run \`npm ci --ignore-scripts\` in ${HERE}`);
    process.exit(2);
}

const DEADLINE = T0 + opts.timeout * 1000;
const APP_ID = "io.synq.interop.persist";

const checks = [];
const info = { box, phase: opts.phase };
function check(name, ok, detail) {
    checks.push({ name, ok: !!ok, ...(detail === undefined ? {} : { detail }) });
    log(`${ok ? "ok  " : "FAIL"} ${name}${!ok && detail !== undefined ? ": " + JSON.stringify(detail) : ""}`);
    return !!ok;
}
function log(msg) {
    process.stderr.write(`[persist +${((Date.now() - T0) / 1000).toFixed(1)}s] ${msg}\n`);
}
class Failure extends Error {}

const clients = new Map();

class Client {
    constructor(name, version, session, password) {
        this.name = name;
        this.output = [];
        this.joined = null;
        this.left = null;
        this.sent = 0;
        this.errors = [];
        this.exit = null;
        this.waiters = [];
        this.proc = fork(join(HERE, "persist-client.mjs"), [], {
            cwd: HERE,
            stdio: ["ignore", "pipe", "pipe", "ipc"],
            env: {
                ...process.env,
                CLIENT_NAME: name,
                APP_VERSION: String(version),
                CROQUET_BOX: box,
                CROQUET_APP_ID: APP_ID,
                CROQUET_SESSION: session,
                CROQUET_PASSWORD: password,
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
            if (!this.left && !this.toldExit) this.errors.push(`process exited (code ${code}, signal ${signal})`);
            for (const w of this.waiters.splice(0)) w.reject(new Failure(`${name} exited`));
        });
        clients.set(name, this);
    }

    onMessage(msg) {
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
        if (this.errors.length) return Promise.reject(new Failure(`${this.name} failed: ${this.errors.join("; ")}`));
        return new Promise((resolve, reject) => this.waiters.push({ type, resolve, reject }));
    }

    async state(what) {
        const p = this.next("state");
        this.send("state");
        return withDeadline(p, what);
    }

    async do(cmd, reply, what, extra = {}) {
        const p = this.next(reply);
        this.send(cmd, extra);
        return withDeadline(p, what);
    }
}

function withDeadline(promise, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Failure(`overall timeout while waiting for ${what}`)), Math.max(0, DEADLINE - Date.now())); }),
    ]).finally(() => clearTimeout(timer));
}

/** Poll the clients' states until `cond(states)` is truthy (returns it), or fail at the deadline. */
async function waitFor(what, list, cond, everyMs = 100) {
    for (;;) {
        const states = await Promise.all(list.map(c => c.state(what)));
        for (const c of list) if (c.errors.length) throw new Failure(`${c.name} failed: ${c.errors.join("; ")}`);
        const result = cond(states);
        if (result) return result;
        if (Date.now() > DEADLINE) throw new Failure(`overall timeout while waiting for ${what}`);
        await new Promise(r => setTimeout(r, everyMs));
    }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
/** `v` with every object's keys sorted (Croquet stringifies persisted data with sorted keys). */
const canon = v => Array.isArray(v) ? v.map(canon)
    : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map(k => [k, canon(v[k])])) : v;

/** Wait until `list` agree on a history with `count` entries (every increment applied). */
async function agreement(what, list, count) {
    const states = await waitFor(what, list,
        s => s.every(x => x.count === count && same(x.history, s[0].history)) ? s : null);
    check(`${what}: ${list.map(c => c.name).join(", ")} agree (count ${count})`, true);
    return states;
}

async function joinAs(name, version, session, password) {
    const c = new Client(name, version, session, password);
    await withDeadline(c.next("joined"), `${name} to join`);
    log(`${name} (version ${version}) joined session ${c.joined.sessionId.slice(0, 12)}…`);
    return c;
}

function wireChecks(c, s) {
    check(`${c.name}: one JOIN, one SYNC, no gap in RECV seqs, never closed by the reflector`,
        s.wire.joins === 1 && s.wire.syncs.length === 1 && s.wire.recvSeqGaps === 0 && s.wire.closes.length === 0,
        { joins: s.wire.joins, syncs: s.wire.syncs.length, gaps: s.wire.recvSeqGaps, closes: s.wire.closes });
}

// ------------------------------------------------------------------------------ version 1
async function version1(session, password) {
    const K = opts.incs;
    const A = await joinAs("A1", 1, session, password);
    const B = await joinAs("B1", 1, session, password);
    check("A1's SYNC: a fresh session, nothing persisted yet", A.joined.wire.syncs[0].url === "" && !A.joined.wire.syncs[0].persisted, A.joined.wire.syncs[0]);
    await Promise.all([A, B].map(c => c.do("inc", "sent", "increments", { count: K })));
    await agreement("version 1", [A, B], 2 * K);

    A.send("save");
    // Croquet: every client votes (TUTTI), one uploads and sends SAVE.
    const saved = await waitFor("the persistent data to be uploaded (SAVE)", [A, B], states => {
        const saves = states.flatMap(s => s.wire.saves.filter(x => !x.dissident));
        return saves.length ? { save: saves[0], states } : null;
    });
    const url = saved.save.url;
    info.savedUrl = url;
    const prefix = `${box}files/apps/${APP_ID}/`;
    check("the data was uploaded to the box's own file store (files/apps/<appId>/<persistentId>/save/…)",
        url.startsWith(prefix) && /^[^/]+\/save\/[^/]+$/.test(url.slice(prefix.length)), url);
    const dl = await fetch(url).catch(e => ({ ok: false, status: String(e) }));
    const bytes = dl.ok ? Buffer.from(await dl.arrayBuffer()) : Buffer.alloc(0);
    check("the saved data is downloadable and encrypted (CRQ1)", dl.ok && bytes.subarray(0, 4).toString() === "CRQ1",
        { status: dl.status, bytes: bytes.length });
    const final = saved.states[0];
    for (const [i, c] of [A, B].entries()) wireChecks(c, saved.states[i]);
    await Promise.all([A, B].map(c => c.do("leave", "left", `${c.name} to leave`)));
    return { session, password, savedUrl: url, sessionId: final.sessionId, count: final.count, history: final.history };
}

// ------------------------------------------------------------------------------ version 2
async function version2(v1) {
    const K = opts.incs;
    const expected = { format: "counter/1", count: v1.count, history: v1.history };
    const A = await joinAs("A2", 2, v1.session, v1.password);
    check("version 2 is another session (its code differs)", A.joined.sessionId !== v1.sessionId,
        { v1: v1.sessionId, v2: A.joined.sessionId });
    const syncA = A.joined.wire.syncs[0];
    check("A2's SYNC names version 1's saved data (url, persisted: true)", syncA.url === v1.savedUrl && syncA.persisted,
        { sync: syncA, saved: v1.savedUrl });
    check("A2's root model init() got version 1's data", A.joined.initHere && same(canon(A.joined.initHere.persisted), canon(expected)),
        { got: A.joined.initHere, expected });
    check("A2 starts at version 1's count", A.joined.count === v1.count, { count: A.joined.count, v1: v1.count });

    // Messages in the session before the second joiner: replaying them from an empty
    // start instead of the persisted data would give B2 another count.
    await A.do("inc", "sent", "A2's increments", { count: K });
    await agreement("A2 alone", [A], v1.count + K);
    const B = await joinAs("B2", 2, v1.session, v1.password);
    const syncB = B.joined.wire.syncs[0];
    info.secondJoinerSync = syncB;
    check("B2's SYNC (no snapshot yet) names the same persisted data", syncB.url === v1.savedUrl && syncB.persisted,
        { sync: syncB, saved: v1.savedUrl });
    check("B2's SYNC replays the messages since the session started", syncB.messages >= K, syncB);
    check("B2's root model init() got version 1's data too", B.joined.initHere && same(canon(B.joined.initHere.persisted), canon(expected)),
        B.joined.initHere);
    await agreement("B2 joined", [A, B], v1.count + K);
    await Promise.all([A, B].map(c => c.do("inc", "sent", "increments", { count: K })));
    const states = await agreement("version 2", [A, B], v1.count + 3 * K);
    check("version 2's history starts with version 1's", same(states[0].history.slice(0, v1.count).map(e => e.slice(0, 3)), v1.history),
        states[0].history.slice(0, 3));
    for (const [i, c] of [A, B].entries()) wireChecks(c, states[i]);
    info.finalCount = states[0].count;
    await Promise.all([A, B].map(c => c.do("leave", "left", `${c.name} to leave`)));
}

async function scenario() {
    if (opts.phase === "v2") {
        const v1 = JSON.parse(readFileSync(opts.state, "utf8"));
        info.session = v1.session;
        await version2(v1);
        return;
    }
    const session = opts.session || `persist-${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`;
    const password = opts.password || randomBytes(9).toString("base64url");
    info.session = session;
    const v1 = await version1(session, password);
    info.v1Count = v1.count;
    if (opts.phase === "v1") {
        writeFileSync(opts.state, JSON.stringify(v1));
        return;
    }
    await version2(v1);
}

// ------------------------------------------------------------------------------ run
async function cleanup() {
    for (const c of clients.values()) { c.toldExit = true; c.send("exit"); }
    const until = Date.now() + 3000;
    while ([...clients.values()].some(c => !c.exit) && Date.now() < until) await new Promise(r => setTimeout(r, 50));
    for (const c of clients.values()) if (!c.exit) c.proc.kill("SIGKILL");
}

function emit(err) {
    const failed = checks.filter(c => !c.ok).map(c => c.name);
    if (err) failed.push(`error: ${err.message}`);
    const ok = failed.length === 0;
    if (!ok) {
        for (const c of clients.values()) {
            process.stderr.write(`----- output of client ${c.name} (last ${Math.min(c.output.length, 60)} lines) -----\n`);
            for (const line of c.output.slice(-60)) process.stderr.write(`  ${line}\n`);
            if (c.errors.length) process.stderr.write(`  errors: ${c.errors.join("\n  ")}\n`);
        }
    }
    process.stdout.write(JSON.stringify({ ok, checks: checks.length, passed: checks.filter(c => c.ok).length, failed, durationMs: Date.now() - T0, ...info }) + "\n");
    return ok;
}

const overall = setTimeout(() => {
    log("overall timeout: killing clients");
    for (const c of clients.values()) if (!c.exit) c.proc.kill("SIGKILL");
    emit(new Failure("overall timeout"));
    process.exit(1);
}, opts.timeout * 1000 + 5000);

let failure = null;
try {
    await scenario();
} catch (e) {
    failure = e;
    log(`aborted: ${e instanceof Failure ? e.message : e.stack}`);
}
await cleanup();
clearTimeout(overall);
process.exit(emit(failure) ? 0 : 1);
