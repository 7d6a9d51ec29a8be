// index.js as nanoclaw runs it (--supervised), with a fake 'baileys' module put in place of the
// real one by a module resolve hook: the websocket, the auth, a message in, a reply out, exit when
// stdin closes. It needs the `ws` package, so it is skipped until `npm ci` has run in bridge/.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import test from 'node:test'
import { fileURLToPath, pathToFileURL } from 'node:url'

const BRIDGE = join(dirname(fileURLToPath(import.meta.url)), '..')
const installed = existsSync(join(BRIDGE, 'node_modules', 'ws'))

// The part of Baileys index.js uses. The socket opens at once, then delivers FAKE_WA_MESSAGES;
// what it is asked to send goes to FAKE_WA_LOG, one JSON line each.
const FAKE_BAILEYS = `
import { appendFileSync } from 'node:fs'
const record = (entry) => appendFileSync(process.env.FAKE_WA_LOG, JSON.stringify(entry) + '\\n')
export const DisconnectReason = { connectionClosed: 428, connectionLost: 408, connectionReplaced: 440,
  timedOut: 408, loggedOut: 401, badSession: 500, restartRequired: 515 }
export const Browsers = { appropriate: (browser) => ['Linux', browser, '6.1'] }
export const proto = { Message: { fromObject: (o) => ({ ...o, rebuilt: true }) } }
export const fetchLatestWaWebVersion = async () => ({ version: [2, 3000, 1] })
export const useMultiFileAuthState = async () => ({ state: { creds: {} }, saveCreds: async () => {} })
export const downloadMediaMessage = async (m) => {
  if (process.env.FAKE_WA_HANG_MEDIA) await new Promise(() => {}) // a download that never ends
  return (await import('node:stream')).Readable.from([Buffer.from('bytes of ' + m.key.id)])
}
let sockets = 0
export default function makeWASocket () {
  const handlers = {}
  const emit = (name, data) => (handlers[name] || []).forEach((fn) => fn(data))
  const first = ++sockets === 1
  setTimeout(() => {
    if (process.env.FAKE_WA_LOGIN && first) { // a QR code, scanned: WhatsApp asks for a restart
      emit('connection.update', { qr: '2@fakeref,noisekey,identitykey,advsecret' })
      emit('connection.update', { connection: 'close', lastDisconnect: { error: { output: { statusCode: 515 } } } })
      return
    }
    emit('connection.update', { connection: 'open' })
    emit('messages.upsert', { type: 'notify', messages: JSON.parse(process.env.FAKE_WA_MESSAGES || '[]') })
    // what WhatsApp queued while the bridge was away comes as 'append', with our own echoes
    emit('messages.upsert', { type: 'append', messages: JSON.parse(process.env.FAKE_WA_OFFLINE || '[]') })
  }, 50)
  return {
    user: { id: '4915550000:3@s.whatsapp.net', lid: '99887766554433:3@lid' },
    ev: { on: (name, fn) => { (handlers[name] ||= []).push(fn) } },
    signalRepository: { lidMapping: { getPNForLID: async () => null } },
    updateMediaMessage: async (m) => m,
    sendMessage: async (jid, content) => {
      record({ to: jid, content })
      return { key: { id: 'OUT' + Math.random(), remoteJid: jid, fromMe: true }, message: content }
    },
    sendPresenceUpdate: async (state, jid) => record({ presence: state, to: jid }),
    end: () => record({ end: true })
  }
}
`

const ALICE = '15550001@s.whatsapp.net'
const MESSAGES = [
  { key: { remoteJid: ALICE, fromMe: false, id: 'IN1' }, message: { conversation: 'hello bridge' }, messageTimestamp: 1767225600, pushName: 'Alice' },
  { key: { remoteJid: ALICE, fromMe: false, id: 'IN2' }, message: { imageMessage: { caption: 'a photo', mimetype: 'image/jpeg' } }, messageTimestamp: 1767225601 },
  { key: { remoteJid: ALICE, fromMe: true, id: 'MINE' }, message: { conversation: 'our own echo' } }
]

async function freePort () {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address()
  server.close()
  return port
}

function setUp (dir) {
  const fake = join(dir, 'fake-baileys.mjs')
  writeFileSync(fake, FAKE_BAILEYS)
  writeFileSync(join(dir, 'resolve.mjs'), `export async function resolve (specifier, context, next) {
    return specifier === 'baileys' ? { url: ${JSON.stringify(pathToFileURL(fake).href)}, shortCircuit: true } : next(specifier, context)
  }`)
  writeFileSync(join(dir, 'hook.mjs'), `import { register } from 'node:module'
register('./resolve.mjs', import.meta.url)`)
  mkdirSync(join(dir, 'auth'))
  writeFileSync(join(dir, 'auth', 'creds.json'), JSON.stringify({ me: { id: '4915550000:3@s.whatsapp.net' } }))
}

test('the supervised bridge: Origin refused, auth, messages in, sends out, exit with stdin', { skip: !installed && 'run `npm ci` in bridge/ first' }, async (t) => {
  const { default: WebSocket } = await import('ws')
  const dir = mkdtempSync(join(tmpdir(), 'bridge-test-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  setUp(dir)
  const port = await freePort()
  const log = join(dir, 'whatsapp.log')
  const child = spawn(process.execPath, ['--import', pathToFileURL(join(dir, 'hook.mjs')).href, 'index.js', '--supervised'], {
    cwd: BRIDGE,
    stdio: ['pipe', 'inherit', 'pipe'],
    env: { ...process.env, BRIDGE_PORT: String(port), BRIDGE_TOKEN: 'tok', NANOCLAW_HOME: dir, AUTH_DIR: join(dir, 'auth'), MEDIA_DIR: join(dir, 'media'), FAKE_WA_LOG: log, FAKE_WA_MESSAGES: JSON.stringify(MESSAGES) }
  })
  let stderr = ''
  child.stderr.on('data', (d) => { stderr += d })
  t.after(() => child.kill())
  const url = `ws://127.0.0.1:${port}`
  for (let i = 0; !stderr.includes('listening'); i++) {
    assert.ok(i < 100 && child.exitCode === null, `the bridge did not start: ${stderr}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }

  const browser = new WebSocket(url, { origin: 'https://evil.example' })
  const [, refused] = await once(browser, 'unexpected-response')
  assert.equal(refused.statusCode, 403)
  browser.on('error', () => {})
  refused.destroy()

  const ws = new WebSocket(url)
  const frames = []
  const waitFor = async (check, what) => {
    for (let i = 0; i < 100; i++) {
      const found = frames.find(check)
      if (found) return found
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    assert.fail(`no ${what} in ${JSON.stringify(frames)} (${stderr})`)
  }
  ws.on('message', (data) => frames.push(JSON.parse(data)))
  await once(ws, 'open')
  ws.send(JSON.stringify({ type: 'auth', token: 'tok' }))
  await waitFor((f) => f.type === 'status' && f.state === 'connected', 'connected status')
  const text = await waitFor((f) => f.id === 'IN1', 'text message')
  assert.deepEqual([text.chat, text.phone, text.text, text.name], [ALICE, '+15550001', 'hello bridge', 'Alice'])
  const photo = await waitFor((f) => f.id === 'IN2', 'photo message')
  assert.equal(photo.kind, 'image')
  assert.ok(photo.media[0].startsWith(join(dir, 'media')))
  assert.equal(readFileSync(photo.media[0], 'utf8'), 'bytes of IN2')
  assert.ok(!frames.some((f) => f.id === 'MINE'))

  ws.send(JSON.stringify({ type: 'presence', to: ALICE, state: 'composing' }))
  ws.send(JSON.stringify({ type: 'send', id: 'r1.0', to: ALICE, text: 'hello Alice' }))
  assert.deepEqual(await waitFor((f) => f.type === 'ack', 'ack'), { type: 'ack', id: 'r1.0', ok: true })
  const sent = readFileSync(log, 'utf8').trim().split('\n').map((line) => JSON.parse(line))
  assert.deepEqual(sent, [{ presence: 'composing', to: ALICE }, { to: ALICE, content: { text: 'hello Alice' } }])
  ws.close()

  child.stdin.end() // nanoclaw went away
  const [code] = await once(child, 'exit')
  assert.equal(code, 0)
})

test('login: shows the QR code, reconnects after the restart WhatsApp asks for, exits once linked', { skip: !installed && 'run `npm ci` in bridge/ first' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bridge-login-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  setUp(dir)
  rmSync(join(dir, 'auth'), { recursive: true })
  const run = async () => {
    const child = spawn(process.execPath, ['--import', pathToFileURL(join(dir, 'hook.mjs')).href, 'index.js', '--login'], {
      cwd: BRIDGE,
      env: { ...process.env, NANOCLAW_HOME: dir, AUTH_DIR: join(dir, 'auth'), FAKE_WA_LOG: join(dir, 'log'), FAKE_WA_LOGIN: '1' }
    })
    let out = ''
    child.stdout.on('data', (d) => { out += d })
    child.stderr.on('data', (d) => { out += d })
    const [code] = await once(child, 'exit')
    return [code, out]
  }
  const [code, out] = await run()
  assert.equal(code, 0, out)
  assert.match(out, /Linked devices → Link a device/)
  assert.match(out, /[▀▄█]/) // the QR code itself, drawn with block characters
  assert.match(out, /Linked as \+4915550000/)
  assert.ok(!existsSync(join(dir, 'auth', 'login.pid')))
  writeFileSync(join(dir, 'auth', 'creds.json'), JSON.stringify({ me: { id: '4915550000:3@s.whatsapp.net' } }))
  const [again, said] = await run()
  assert.equal(again, 0)
  assert.match(said, /Already linked to WhatsApp as \+4915550000/)
})

// The bridge as nanoclaw runs it, and a client that authenticated: frames it got, and what said.
async function runBridge (t, dir, env) {
  const { default: WebSocket } = await import('ws')
  const port = await freePort()
  const child = spawn(process.execPath, ['--import', pathToFileURL(join(dir, 'hook.mjs')).href, 'index.js', '--supervised'], {
    cwd: BRIDGE,
    stdio: ['pipe', 'inherit', 'pipe'],
    env: { ...process.env, BRIDGE_PORT: String(port), BRIDGE_TOKEN: 'tok', NANOCLAW_HOME: dir, AUTH_DIR: join(dir, 'auth'), MEDIA_DIR: join(dir, 'media'), FAKE_WA_LOG: join(dir, 'log'), ...env }
  })
  let stderr = ''
  child.stderr.on('data', (d) => { stderr += d })
  t.after(() => child.kill('SIGKILL'))
  for (let i = 0; !stderr.includes('listening'); i++) {
    assert.ok(i < 100 && child.exitCode === null, `the bridge did not start: ${stderr}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const ws = new WebSocket(`ws://127.0.0.1:${port}`)
  const frames = []
  ws.on('message', (data) => frames.push(JSON.parse(data)))
  await once(ws, 'open')
  ws.send(JSON.stringify({ type: 'auth', token: 'tok' }))
  const waitFor = async (check, what) => {
    for (let i = 0; i < 100; i++) {
      if (frames.some(check)) return frames.find(check)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    assert.fail(`no ${what} in ${JSON.stringify(frames)} (${stderr})`)
  }
  return { child, ws, frames, waitFor }
}

test('what WhatsApp queued while we were away is passed on, and what nanoclaw has not confirmed survives a kill', { skip: !installed && 'run `npm ci` in bridge/ first' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bridge-kept-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  setUp(dir)
  const offline = [
    { key: { remoteJid: ALICE, fromMe: false, id: 'OFF1' }, message: { conversation: 'written while you were away' }, messageTimestamp: { low: 1767225500, high: 0, unsigned: true } },
    { key: { remoteJid: ALICE, fromMe: true, id: 'MINE2' }, message: { conversation: 'our own echo' } }
  ]
  const kept = join(dir, 'state', 'whatsapp', 'bridge')
  const first = await runBridge(t, dir, { FAKE_WA_MESSAGES: JSON.stringify(MESSAGES.slice(0, 1)), FAKE_WA_OFFLINE: JSON.stringify(offline) })
  const away = await first.waitFor((f) => f.id === 'OFF1', 'the message queued while away')
  assert.equal(away.text, 'written while you were away')
  assert.equal(away.timestamp, 1767225500)
  await first.waitFor((f) => f.id === 'IN1', 'the live message')
  const keptIds = () => readdirSync(kept).map((n) => n.split('-')[0])
  first.ws.send(JSON.stringify({ type: 'received', id: 'OFF1' }))
  for (let i = 0; keptIds().includes('OFF1') && i < 100; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  assert.deepEqual(keptIds(), ['IN1']) // confirmed: gone; our echo: never kept
  assert.ok(!first.frames.some((f) => f.id === 'MINE2'))
  first.child.kill('SIGKILL') // nanoclaw never confirmed IN1

  const second = await runBridge(t, dir, {}) // WhatsApp has nothing more to say
  const again = await second.waitFor((f) => f.id === 'IN1', 'the unconfirmed message, again')
  assert.equal(again.text, 'hello bridge') // (its protobuf fields rebuilt by proto.Message)
  second.ws.send(JSON.stringify({ type: 'received', id: 'IN1' }))
  for (let i = 0; readdirSync(kept).length && i < 100; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  assert.deepEqual(readdirSync(kept), [])
})

test('messages behind a slow download are on disk already when the bridge is killed', { skip: !installed && 'run `npm ci` in bridge/ first' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bridge-slow-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  setUp(dir)
  const batch = [MESSAGES[1], MESSAGES[0]] // the photo first: its download holds up the text
  const first = await runBridge(t, dir, { FAKE_WA_MESSAGES: JSON.stringify(batch), FAKE_WA_HANG_MEDIA: '1' })
  await first.waitFor((f) => f.type === 'status' && f.state === 'connected', 'connected status')
  const kept = join(dir, 'state', 'whatsapp', 'bridge')
  for (let i = 0; !(existsSync(kept) && readdirSync(kept).length === 2) && i < 100; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  first.child.kill('SIGKILL')
  const second = await runBridge(t, dir, {})
  await second.waitFor((f) => f.id === 'IN1', 'the text')
  await second.waitFor((f) => f.id === 'IN2', 'the photo')
})
