#!/usr/bin/env node
// A bank account service that takes part in Arbiter transactions over plain
// HTTP/JSON, written from the README alone ("Participants over HTTP"), with
// Node's standard library only. Same behaviour as bank.py:
//
// - 2PC (prepare/commit/rollback), TCC (try/confirm/cancel) and saga steps
//   (action/compensate) under one base URL;
// - a branch's payload is JSON: {"account": "alice", "delta": -30} (an
//   integer delta); debits are reserved in phase 1, credits land in phase
//   2; a saga action applies the change at once and its compensation undoes
//   it, whatever happened since (a compensation must not fail);
// - every call is idempotent, keyed by (txn_id, branch_id).
//
//   node bank.js --port 9200 --accounts alice=100,bob=50
//   GET /balances -> {"alice": 100, "bob": 50}
//   GET /pending  -> {"held": 0}   (branches holding work, waiting for phase 2)

'use strict';
const http = require('http');

const balances = new Map();
const branches = new Map(); // "txn\0branch" -> {state, account, delta, call, reason}
const PHASE1 = new Set(['prepare', 'try', 'action']);
const SETTLE = new Set(['commit', 'confirm']);
const RELEASE = new Set(['rollback', 'cancel', 'compensate']);

function payloadOf(call) {
  if ('payload_json' in call) return call.payload_json;
  const raw = Buffer.from(call.payload || '', 'base64').toString('utf8');
  return raw ? JSON.parse(raw) : {};
}

function phase1(key, name, payload) {
  const seen = branches.get(key);
  if (seen) {
    if (seen.state === 'released') return { vote: 'no', reason: 'this branch was already rolled back' };
    if (seen.state === 'refused') return { vote: 'no', reason: seen.reason };
    return { vote: 'yes' };
  }
  const account = payload.account;
  const delta = payload.delta;
  if (!Number.isSafeInteger(delta)) throw new Error('delta is not an integer');
  if (!balances.has(account)) {
    const reason = `no account ${account}`;
    branches.set(key, { state: 'refused', reason });
    return { vote: 'no', reason };
  }
  if (delta < 0 && balances.get(account) + delta < 0) {
    const reason = `insufficient funds in ${account}`;
    branches.set(key, { state: 'refused', reason });
    return { vote: 'no', reason };
  }
  if (delta < 0 || name === 'action') balances.set(account, balances.get(account) + delta);
  branches.set(key, { state: 'held', account, delta, call: name });
  return { vote: 'yes' };
}

function settle(key) {
  const seen = branches.get(key);
  if (!seen || (seen.state !== 'held' && seen.state !== 'settled')) return null;
  if (seen.state === 'held' && seen.delta > 0) {
    balances.set(seen.account, balances.get(seen.account) + seen.delta);
  }
  seen.state = 'settled';
  return {};
}

function release(key) {
  const seen = branches.get(key);
  if (!seen) {
    branches.set(key, { state: 'released' });
    return {};
  }
  if (seen.state === 'held') {
    if (seen.delta < 0 || seen.call === 'action') {
      balances.set(seen.account, balances.get(seen.account) - seen.delta);
    }
    seen.state = 'released';
  } else if (seen.state === 'refused') {
    seen.state = 'released';
  }
  return {};
}

function answer(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/balances') {
    return answer(res, 200, Object.fromEntries(balances));
  }
  if (req.method === 'GET' && req.url === '/pending') {
    let held = 0;
    for (const b of branches.values()) if (b.state === 'held' && b.call !== 'action') held += 1;
    return answer(res, 200, { held });
  }
  if (req.method !== 'POST') return answer(res, 405, { error: 'POST only' });
  const name = req.url.replace(/\/+$/, '').split('/').pop();
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let call;
    try {
      call = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      if (typeof call.txn_id !== 'string' || typeof call.branch_id !== 'string') throw new Error('no txn_id/branch_id');
    } catch (e) {
      return answer(res, 400, { error: `bad call: ${e.message}` });
    }
    const key = `${call.txn_id}\u0000${call.branch_id}`;
    if (PHASE1.has(name)) {
      // Only phase 1 reads the payload: phase 2 needs the ids alone, so a
      // bad payload can never block a rollback.
      try {
        return answer(res, 200, phase1(key, name, payloadOf(call)));
      } catch (e) {
        return answer(res, 422, { error: `bad payload: ${e.message}` });
      }
    }
    if (SETTLE.has(name)) {
      const done = settle(key);
      return done ? answer(res, 200, done) : answer(res, 500, { error: 'commit for a branch not prepared here' });
    }
    if (RELEASE.has(name)) return answer(res, 200, release(key));
    return answer(res, 404, { error: `no call ${name}` });
  });
});

const args = process.argv.slice(2);
const arg = (flag, fallback) => {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : fallback;
};
for (const pair of arg('--accounts', 'alice=100').split(',')) {
  const [name, balance] = pair.split('=');
  balances.set(name, Number.parseInt(balance, 10));
}
server.listen(Number.parseInt(arg('--port', '9200'), 10), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
