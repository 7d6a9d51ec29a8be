#!/usr/bin/env node
// nanoclaw's WhatsApp bridge: a WhatsApp Web client (Baileys, unofficial) that nanoclaw talks to
// over a websocket on 127.0.0.1. Protocol and checks: lib/protocol.js; messages: lib/mapping.js;
// sending: lib/send.js.
//
//   node index.js --login        link this computer as a WhatsApp device (QR code), then exit
//   node index.js                serve on 127.0.0.1:$BRIDGE_PORT (links first, by QR, if needed)
//   node index.js --supervised   serve as nanoclaw's child: never shows a QR code (waits for
//                                --login to link), and exits when nanoclaw's end of stdin closes
//
// Environment: BRIDGE_TOKEN (required to serve), BRIDGE_PORT (3001), AUTH_DIR, MEDIA_DIR and
// KEPT_DIR (default: $NANOCLAW_HOME/whatsapp-auth, $NANOCLAW_HOME/media/whatsapp and
// $NANOCLAW_HOME/state/whatsapp/bridge: messages until nanoclaw confirms them), LOG_LEVEL (warn).
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { Kept } from './lib/kept.js'
import { saveBounded, toBridgeMessage } from './lib/mapping.js'
import { Hub, refusal } from './lib/protocol.js'
import { Sender } from './lib/send.js'

const args = new Set(process.argv.slice(2))
const HOME = process.env.NANOCLAW_HOME || join(homedir(), '.nanoclaw')
const AUTH_DIR = process.env.AUTH_DIR || join(HOME, 'whatsapp-auth')
const MEDIA_DIR = process.env.MEDIA_DIR || join(HOME, 'media', 'whatsapp')
const KEPT_DIR = process.env.KEPT_DIR || join(HOME, 'state', 'whatsapp', 'bridge')
const PORT = Number(process.env.BRIDGE_PORT || 3001)
const TOKEN = process.env.BRIDGE_TOKEN || ''
const LEVELS = ['trace', 'debug', 'info', 'warn', 'error']
const LEVEL = LEVELS.indexOf(process.env.LOG_LEVEL || 'warn')
const LOCK = join(AUTH_DIR, 'login.pid')

const say = (text) => process.stderr.write(`whatsapp-bridge: ${text}\n`)
function die (text, code = 1) {
  say(text)
  process.exit(code)
}

async function need (name) {
  try {
    return await import(name)
  } catch (e) {
    if (e.code !== 'ERR_MODULE_NOT_FOUND') throw e
    die(`the package ${name} is missing: run \`cd bridge && npm ci\` (or \`make bridge\`)`, 2)
  }
}

// Baileys logs through a pino-like object; this one writes one line per entry at LOG_LEVEL and up.
function logger (bindings = {}) {
  const out = { level: LEVELS[LEVEL] || 'warn', child: (more) => logger({ ...bindings, ...more }) }
  LEVELS.forEach((name, i) => {
    out[name] = (obj, msg) => {
      if (i < LEVEL) return
      const detail = obj?.err?.message || obj?.error?.message || (typeof obj === 'string' ? obj : '')
      say(`${name}: ${[msg, detail].filter(Boolean).join(': ') || JSON.stringify(obj).slice(0, 300)}`)
    }
  })
  return out
}

const { default: makeWASocket, Browsers, DisconnectReason, downloadMediaMessage,
  fetchLatestWaWebVersion, proto, useMultiFileAuthState } = await need('baileys')
const log = logger()

function linkedAs () {
  try {
    return JSON.parse(readFileSync(join(AUTH_DIR, 'creds.json'), 'utf8')).me?.id || null
  } catch {
    return null
  }
}

function loginRunning () {
  try {
    process.kill(Number(readFileSync(LOCK, 'utf8')), 0)
    return true
  } catch {
    return false
  }
}

const phone = (jid) => '+' + String(jid).split('@')[0].split(':')[0]
const reasonOf = (update) => update.lastDisconnect?.error?.output?.statusCode

/** One WhatsApp Web connection with the saved credentials; `on` gets its connection updates. */
async function connect (on, extra = {}, made = () => {}) {
  mkdirSync(AUTH_DIR, { recursive: true, mode: 0o700 })
  const { state, saveCreds } = await useMultiFileAuthState(AUTH_DIR)
  const { version } = await fetchLatestWaWebVersion({ signal: AbortSignal.timeout(10000) })
  const sock = makeWASocket({
    auth: state,
    version,
    logger: log,
    browser: Browsers.appropriate('Chrome'),
    markOnlineOnConnect: false,
    syncFullHistory: false,
    ...extra
  })
  made(sock)
  sock.ev.on('creds.update', saveCreds)
  sock.ev.on('connection.update', (update) => on(update, sock))
  return sock
}

// --- login: show QR codes until the phone has linked us, then exit ---

async function login () {
  const me = linkedAs()
  if (me) {
    console.log(`Already linked to WhatsApp as ${phone(me)}. To link another phone, stop nanoclaw, ` +
      `delete ${AUTH_DIR} and run this again.`)
    return process.exit(0)
  }
  const qrcode = (await need('qrcode-terminal')).default
  mkdirSync(AUTH_DIR, { recursive: true, mode: 0o700 })
  writeFileSync(LOCK, String(process.pid))
  process.on('exit', () => { try { unlinkSync(LOCK) } catch {} })
  let shown = 0
  let linked = false
  const on = (update, sock) => {
    if (linked) return
    if (update.qr) {
      console.log(shown++ ? '\nA new code (the last one expired):' : 'On your phone: WhatsApp → ' +
        'Settings → Linked devices → Link a device, then scan this code:')
      qrcode.generate(update.qr, { small: true })
    }
    if (update.connection === 'open') {
      linked = true
      console.log(`\nLinked as ${phone(sock.user?.id)}. The gateway can use WhatsApp now.`)
      setTimeout(() => { sock.end(undefined); process.exit(0) }, 2000) // let the creds be written
    }
    if (update.connection !== 'close') return
    const reason = reasonOf(update)
    if (reason === DisconnectReason.restartRequired) {
      connect(on).catch((e) => die(`cannot reconnect after linking: ${e.message}`))
    } else if (reason === DisconnectReason.loggedOut) {
      rmSync(AUTH_DIR, { recursive: true, force: true })
      die('WhatsApp refused the link; run this again for a fresh code.')
    } else {
      const why = update.lastDisconnect?.error?.message || 'connection closed'
      die(shown ? `Not linked (${why}): run this again for fresh codes.` : `Cannot reach WhatsApp: ${why}`)
    }
  }
  await connect(on)
}

// --- serve: the websocket for nanoclaw, and a WhatsApp connection that comes back ---

async function serve () {
  if (!TOKEN) die('set BRIDGE_TOKEN: nanoclaw authenticates with it (channels.whatsapp.bridge_token)', 2)
  const { WebSocketServer } = await need('ws')
  const supervised = args.has('--supervised')
  mkdirSync(MEDIA_DIR, { recursive: true })
  let sock = null
  let connected = false
  let attempt = 0
  let queue = Promise.resolve()
  const sentCache = new Map()
  const sender = new Sender({
    socket: () => sock,
    connected: () => connected,
    onSent: (msg) => {
      sentCache.set(msg.key.id, msg.message)
      if (sentCache.size > 200) sentCache.delete(sentCache.keys().next().value)
    }
  })
  const kept = new Kept(KEPT_DIR)
  let replayed = false // what a kill or a restart left in KEPT_DIR: offered at the first connection
  const hub = new Hub({ token: TOKEN, onSend: (f) => sender.handle(f), onPresence: (f) => sender.presence(f), onReceived: (id) => kept.drop(id), log: say })

  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: PORT,
    maxPayload: 1 << 20,
    verifyClient: ({ req }, done) => {
      const why = refusal(req.headers)
      return why ? done(false, 403, why) : done(true)
    }
  })
  wss.on('error', (e) => die(`cannot listen on 127.0.0.1:${PORT}: ${e.message}`, 3))
  wss.on('listening', () => say(`listening on ws://127.0.0.1:${PORT}`))
  wss.on('connection', (ws) => {
    const client = hub.attach({ send: (text) => ws.send(text), close: (code, why) => ws.close(code, why) })
    ws.on('message', (data) => client.message(data.toString()))
    ws.on('close', () => client.closed())
    ws.on('error', () => {})
  })

  async function saveMedia (s, m, name) { // streamed and counted: never whole in memory
    const data = await downloadMediaMessage(m, 'stream', {}, { logger: log, reuploadRequest: s.updateMediaMessage })
    const safe = name.replace(/[^A-Za-z0-9._-]/g, '_').slice(-80) || 'file'
    return saveBounded(data, join(MEDIA_DIR, `${Date.now()}-${randomBytes(4).toString('hex')}-${safe}`))
  }

  // 'notify' is live; 'append' is what WhatsApp queued while we were away (and the echoes of what
  // we sent): both are new to nanoclaw. Baileys has acked each to WhatsApp already, so each is
  // kept on disk at once, as the event comes (downloads wait in a queue), until nanoclaw has it.
  const wanted = (type) => type === 'notify' || type === 'append'
  function keepAll ({ messages, type }) {
    for (const m of wanted(type) ? messages : []) {
      const chat = m.key?.remoteJid
      if (!m.key?.id || m.key.fromMe || !chat || /@(broadcast|newsletter)$/.test(chat)) continue
      try {
        kept.keep(m.key.id, m)
      } catch (e) {
        say(`cannot keep message ${m.key.id} on disk (${e.message}); it is passed on all the same`)
      }
    }
  }

  async function incoming ({ messages, type }, s) {
    if (!wanted(type)) return
    for (const m of messages) {
      const id = m.key?.id
      try {
        const frame = await toBridgeMessage(m, {
          saveMedia: (m, kind, name) => saveMedia(s, m, name),
          pnFor: (lid) => s.signalRepository.lidMapping.getPNForLID(lid),
          self: [s.user?.id, s.user?.lid]
        })
        if (frame) hub.publish(frame)
        else if (id) kept.drop(id) // nothing for nanoclaw
      } catch (e) {
        say(`cannot read message ${id}: ${e.message}`) // kept: tried again at the next start
      }
    }
  }

  const later = (seconds) => setTimeout(start, seconds * 1000 * (0.5 + Math.random() / 2))

  let stopping = false
  function onUpdate (update, s) {
    if (s !== sock || stopping) return // an old connection's last words, or we are leaving
    if (update.qr && !supervised) {
      hub.showQr(update.qr)
      need('qrcode-terminal').then(({ default: q }) => {
        say('not linked yet: scan this code in WhatsApp → Settings → Linked devices → Link a device')
        q.generate(update.qr, { small: true })
      })
    }
    if (update.connection === 'open') {
      connected = true
      attempt = 0
      say(`connected to WhatsApp as ${phone(s.user?.id)}`)
      hub.setStatus('connected')
      if (!replayed) {
        replayed = true
        const left = kept.all(say).map((m) => ({ ...m, message: m.message && proto.Message.fromObject(m.message) }))
        if (left.length) { // bytes and longs as Baileys had them (media keys: a re-upload needs them)
          queue = queue.then(() => incoming({ messages: left, type: 'notify' }, s))
            .catch((e) => say(`cannot read kept messages: ${e.message}`))
        }
      }
    }
    if (update.connection !== 'close') return
    connected = false
    sock = null
    const reason = reasonOf(update)
    if (reason === DisconnectReason.loggedOut) {
      say('WhatsApp logged this device out: link it again with `python nanoclaw.py channels login`')
      rmSync(AUTH_DIR, { recursive: true, force: true })
      hub.setStatus('logged_out')
      return later(supervised ? 3 : 1)
    }
    hub.setStatus('disconnected')
    if (reason === DisconnectReason.restartRequired) return start()
    const wait = reason === DisconnectReason.connectionReplaced ? 30 : Math.min(60, 2 ** attempt++)
    say(`connection closed (${update.lastDisconnect?.error?.message || reason}); again in up to ${wait}s`)
    later(wait)
  }

  function start () {
    if (supervised && (!linkedAs() || loginRunning())) {
      if (hub.state !== 'logged_out') {
        say('not linked: run `python nanoclaw.py channels login` and scan the QR code')
        hub.setStatus('logged_out')
      }
      return later(6) // look again in a few seconds
    }
    const made = (s) => {
      sock = s
      s.ev.on('messages.upsert', (event) => {
        keepAll(event)
        queue = queue.then(() => incoming(event, s)).catch((e) => say(`cannot read messages: ${e.message}`))
      })
    }
    connect(onUpdate, { getMessage: async (key) => sentCache.get(key.id) }, made)
      .catch((e) => {
        say(`cannot connect: ${e.message}`)
        later(Math.min(60, 2 ** attempt++))
      })
  }

  const stop = () => {
    stopping = true
    try { sock?.end(undefined) } catch {}
    wss.close()
    setTimeout(() => process.exit(0), 300)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  if (supervised) {
    process.stdin.on('end', stop) // nanoclaw went away (even kill -9): so do we
    process.stdin.resume()
  }
  start()
}

if (args.has('--login')) await login()
else await serve()
