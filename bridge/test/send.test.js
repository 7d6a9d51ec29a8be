// Sending through a fake of the Baileys socket: texts, files, retries that must not send twice.
import assert from 'node:assert/strict'
import test from 'node:test'
import { classify, mediaContent, RATE_LIMIT_WAIT_S, Sender, toJid } from '../lib/send.js'

// The two methods of a Baileys socket the sender uses; `fail` makes the next sends throw.
function fakeSocket () {
  return {
    sent: [],
    presences: [],
    fail: [],
    async sendMessage (jid, content) {
      const error = this.fail.shift()
      if (error) throw error
      this.sent.push({ jid, content })
      return { key: { id: `W${this.sent.length}`, remoteJid: jid, fromMe: true }, message: content }
    },
    async sendPresenceUpdate (state, jid) { this.presences.push({ state, jid }) }
  }
}

function sender (sock, options = {}) {
  const kept = []
  const s = new Sender({ socket: () => sock, connected: () => true, exists: () => true, onSent: (m) => kept.push(m), ...options })
  s.kept = kept
  return s
}

// How Baileys reports WhatsApp's errors: a Boom with output.statusCode.
const boom = (message, statusCode) => Object.assign(new Error(message), { output: { statusCode } })

test('phone numbers become user jids; jids pass; anything else is refused', () => {
  assert.equal(toJid('+4915112345678'), '4915112345678@s.whatsapp.net')
  assert.equal(toJid('4915112345678'), '4915112345678@s.whatsapp.net')
  assert.equal(toJid('+1 (555) 010-0000'), '15550100000@s.whatsapp.net')
  assert.equal(toJid('120363041234567890@g.us'), '120363041234567890@g.us')
  assert.equal(toJid('123456789012345@lid'), '123456789012345@lid')
  for (const bad of ['', 'bob', '12', 'a b@c', undefined, 42]) assert.equal(toJid(bad), null)
})

test('files are sent as what their extension says', () => {
  assert.deepEqual(mediaContent('/m/photo.JPG'), { image: { url: '/m/photo.JPG' }, mimetype: 'image/jpeg' })
  assert.deepEqual(mediaContent('/m/say.ogg'), { audio: { url: '/m/say.ogg' }, mimetype: 'audio/ogg; codecs=opus', ptt: true })
  assert.equal(mediaContent('/m/song.mp3').ptt, false)
  assert.deepEqual(mediaContent('/m/report.pdf'), { document: { url: '/m/report.pdf' }, mimetype: 'application/pdf', fileName: 'report.pdf' })
  assert.equal(mediaContent('/m/data.bin').mimetype, 'application/octet-stream')
})

test('a text and its files go out in order, and each sent message is kept', async () => {
  const sock = fakeSocket()
  const s = sender(sock)
  const ack = await s.handle({ id: 'o1', to: '+15550001', text: 'here you go', media: ['/m/a.png', '/m/b.pdf'] })
  assert.deepEqual(ack, { ok: true })
  assert.deepEqual(sock.sent.map((x) => [x.jid, Object.keys(x.content)[0]]),
    [['15550001@s.whatsapp.net', 'text'], ['15550001@s.whatsapp.net', 'image'], ['15550001@s.whatsapp.net', 'document']])
  assert.equal(s.kept.length, 3)
})

test('bad frames are refused as permanent, before anything is sent', async () => {
  const sock = fakeSocket()
  const s = sender(sock, { exists: (p) => p !== '/gone.png' })
  for (const [frame, why] of [
    [{ to: '+15550001', text: 'x' }, /id/],
    [{ id: '1', to: 'nobody', text: 'x' }, /not a WhatsApp chat/],
    [{ id: '2', to: '+15550001', text: '' }, /nothing to send/],
    [{ id: '3', to: '+15550001', text: 'x', media: ['/gone.png'] }, /no such file/],
    [{ id: '4', to: '+15550001', text: 'x', media: '/a.png' }, /list of paths/]
  ]) {
    const ack = await s.handle(frame)
    assert.equal(ack.ok, false)
    assert.equal(ack.permanent, true)
    assert.match(ack.error, why)
  }
  assert.deepEqual(sock.sent, [])
})

test('while WhatsApp is disconnected a send fails so that nanoclaw retries', async () => {
  const sock = fakeSocket()
  let up = false
  const s = sender(sock, { connected: () => up })
  const ack = await s.handle({ id: 'd1', to: '+15550001', text: 'later' })
  assert.equal(ack.ok, false)
  assert.ok(!ack.permanent)
  up = true
  assert.deepEqual(await s.handle({ id: 'd1', to: '+15550001', text: 'later' }), { ok: true })
  assert.equal(sock.sent.length, 1)
})

test('a rate limit answer tells nanoclaw when to retry', async () => {
  const sock = fakeSocket()
  sock.fail.push(boom('rate-overlimit', 429))
  const ack = await sender(sock).handle({ id: 'r1', to: '+15550001', text: 'x' })
  assert.equal(ack.ok, false)
  assert.equal(ack.retry_after, RATE_LIMIT_WAIT_S)
  assert.equal(classify(boom('Connection Closed', 428)).retry_after, undefined)
})

test('a frame sent again does not send twice: done parts are skipped, a running send is joined', async () => {
  const sock = fakeSocket()
  const s = sender(sock)
  sock.fail.push(undefined, boom('media upload failed', 500)) // the text goes, the file fails
  const frame = { id: 'again', to: '+15550001', text: 'caption', media: ['/m/a.png'] }
  assert.equal((await s.handle(frame)).ok, false)
  assert.deepEqual(await s.handle(frame), { ok: true })
  assert.deepEqual(sock.sent.map((x) => Object.keys(x.content)[0]), ['text', 'image'])
  assert.deepEqual(await s.handle(frame), { ok: true }) // the ack was lost: nothing is resent
  const [a, b] = await Promise.all([s.handle({ ...frame, id: 'twice' }), s.handle({ ...frame, id: 'twice' })])
  assert.deepEqual([a, b], [{ ok: true }, { ok: true }])
  assert.equal(sock.sent.length, 4)
})

test('presence goes to the chat while connected, and is skipped otherwise', async () => {
  const sock = fakeSocket()
  let up = true
  const s = sender(sock, { connected: () => up })
  await s.presence({ to: '+15550001', state: 'composing' })
  await s.presence({ to: '15550001@s.whatsapp.net', state: 'paused' })
  up = false
  await s.presence({ to: '+15550001', state: 'composing' })
  assert.deepEqual(sock.presences, [{ state: 'composing', jid: '15550001@s.whatsapp.net' },
    { state: 'paused', jid: '15550001@s.whatsapp.net' }])
})
