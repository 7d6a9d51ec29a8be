// The websocket rules: no Origin, the token first, then frames routed; unconfirmed messages kept.
import assert from 'node:assert/strict'
import test from 'node:test'
import { CLOSE_UNAUTHORIZED, Hub, refusal, sameToken } from '../lib/protocol.js'

// A connection as the hub sees it: what it was sent, and how it was closed.
function conn () {
  return {
    frames: [],
    closed: null,
    send (text) { this.frames.push(JSON.parse(text)) },
    close (code, reason) { this.closed = { code, reason } }
  }
}

function hub (options = {}) {
  const sends = []
  const h = new Hub({ token: 's3cret', onSend: async (f) => { sends.push(f); return { ok: true } }, ...options })
  h.sends = sends
  return h
}

const settle = () => new Promise((resolve) => setImmediate(resolve))

test('an upgrade with an Origin header is refused; one without is let through', () => {
  assert.match(refusal({ origin: 'https://evil.example', host: '127.0.0.1:3001' }), /Origin/)
  assert.match(refusal({ origin: 'null' }), /Origin/)
  assert.equal(refusal({ host: '127.0.0.1:3001', 'sec-websocket-version': '13' }), null)
})

test('tokens compare exactly, and an empty one never matches', () => {
  assert.ok(sameToken('s3cret', 's3cret'))
  assert.ok(!sameToken('s3cre', 's3cret'))
  assert.ok(!sameToken('', ''))
  assert.ok(!sameToken(undefined, 's3cret'))
  assert.throws(() => new Hub({ token: '', onSend: () => {} }), /BRIDGE_TOKEN/)
})

test('a wrong token, or any frame before auth, closes the connection with 4001', async () => {
  const h = hub()
  for (const first of [{ type: 'auth', token: 'guess' }, { type: 'send', id: '1', to: '+1', text: 'x' }, 'not json']) {
    const c = conn()
    h.attach(c).message(typeof first === 'string' ? first : JSON.stringify(first))
    await settle()
    assert.equal(c.closed.code, CLOSE_UNAUTHORIZED)
    assert.deepEqual(c.frames, [])
  }
  assert.equal(h.sends.length, 0)
  assert.equal(h.clients.size, 0)
})

test('a client that never authenticates is closed after the timeout', async () => {
  const h = hub({ authTimeoutMs: 20 })
  const c = conn()
  h.attach(c)
  await new Promise((resolve) => setTimeout(resolve, 60))
  assert.equal(c.closed.code, CLOSE_UNAUTHORIZED)
})

test('after auth: the status, then sends are acked with their id', async () => {
  const h = hub()
  h.setStatus('connected')
  const c = conn()
  const client = h.attach(c)
  client.message(JSON.stringify({ type: 'auth', token: 's3cret' }))
  assert.deepEqual(c.frames, [{ type: 'status', state: 'connected' }])
  client.message(JSON.stringify({ type: 'send', id: 'm1', to: '+15550001', text: 'hi' }))
  await settle()
  assert.deepEqual(h.sends, [{ type: 'send', id: 'm1', to: '+15550001', text: 'hi' }])
  assert.deepEqual(c.frames.at(-1), { type: 'ack', id: 'm1', ok: true })
  client.message('{oops')
  client.message(JSON.stringify({ type: 'dance' }))
  assert.deepEqual(c.frames.slice(-2).map((f) => f.type), ['error', 'error'])
  assert.equal(c.closed, null)
})

test('a send that throws is acked as failed, not dropped', async () => {
  const h = new Hub({ token: 't', onSend: async () => { throw new Error('boom') } })
  const c = conn()
  const client = h.attach(c)
  client.message(JSON.stringify({ type: 'auth', token: 't' }))
  client.message(JSON.stringify({ type: 'send', id: 'x', to: '+15550001', text: 'hi' }))
  await settle()
  assert.deepEqual(c.frames.at(-1), { type: 'ack', id: 'x', ok: false, error: 'boom' })
})

test('messages wait for a client and are sent again until confirmed', async () => {
  const confirmed = []
  const h = hub({ onReceived: (id) => confirmed.push(id) })
  h.publish({ type: 'message', id: 'A', text: 'while nobody listened' })
  const first = conn()
  const one = h.attach(first)
  one.message(JSON.stringify({ type: 'auth', token: 's3cret' }))
  h.publish({ type: 'message', id: 'B', text: 'live' })
  assert.deepEqual(first.frames.map((f) => f.id ?? f.type), ['status', 'A', 'B'])
  one.message(JSON.stringify({ type: 'received', id: 'A' }))
  assert.deepEqual(confirmed, ['A']) // the kept copy goes
  one.closed() // the connection dropped before B was confirmed
  const second = conn()
  h.attach(second).message(JSON.stringify({ type: 'auth', token: 's3cret' }))
  assert.deepEqual(second.frames.map((f) => f.id ?? f.type), ['status', 'B'])
})

test('the QR code and status changes reach authenticated clients only', () => {
  const h = hub()
  const outsider = conn()
  h.attach(outsider)
  const c = conn()
  h.attach(c).message(JSON.stringify({ type: 'auth', token: 's3cret' }))
  h.showQr('2@abc')
  h.setStatus('logged_out')
  assert.deepEqual(c.frames.slice(1), [{ type: 'qr', qr: '2@abc' }, { type: 'status', state: 'logged_out' }])
  assert.deepEqual(outsider.frames, [])
  const late = conn()
  h.attach(late).message(JSON.stringify({ type: 'auth', token: 's3cret' }))
  assert.deepEqual(late.frames, [{ type: 'status', state: 'logged_out' }, { type: 'qr', qr: '2@abc' }])
})

test('unconfirmed messages are capped, the oldest dropped first', () => {
  const h = hub({ maxPending: 2 })
  for (const id of ['1', '2', '3']) h.publish({ type: 'message', id })
  assert.deepEqual([...h.pending.keys()], ['2', '3'])
})
