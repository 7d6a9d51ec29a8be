// The websocket side of the bridge: who may connect, the auth handshake, and where frames go.
// Nothing here knows about WhatsApp or about the `ws` package: a connection is any object with
// send(text) and close(code, reason), so the tests drive it with plain objects.
import { createHash, timingSafeEqual } from 'node:crypto'

export const AUTH_TIMEOUT_MS = 5000
export const CLOSE_UNAUTHORIZED = 4001
export const MAX_PENDING = 1000

/** Why an HTTP upgrade must be refused, or null. Browsers always send Origin, so refusing it
 * keeps web pages (which can open websockets to 127.0.0.1) away from the bridge. */
export function refusal (headers) {
  if (headers.origin !== undefined || headers['sec-websocket-origin'] !== undefined) {
    return 'requests with an Origin header are refused: only nanoclaw may talk to the bridge'
  }
  return null
}

/** Constant-time comparison of the token a client gave with ours. An empty token never matches. */
export function sameToken (given, expected) {
  if (typeof given !== 'string' || !given || !expected) return false
  const digest = (s) => createHash('sha256').update(s).digest()
  return timingSafeEqual(digest(given), digest(expected))
}

/** The clients, the handshake, and the messages not yet confirmed by nanoclaw.
 *
 * A client must send {"type": "auth", "token"} first (within authTimeoutMs); anything else, or a
 * wrong token, closes the connection with 4001. Then it gets the current status (and QR code),
 * and every message it has not confirmed with {"type": "received", "id"}: messages survive a
 * dropped connection and are sent again after the next auth; onReceived(id) hears each
 * confirmation. `send` frames go to onSend, whose answer becomes {"type": "ack", "id", ...};
 * `presence` frames go to onPresence. */
export class Hub {
  constructor ({ token, onSend, onPresence = async () => {}, onReceived = () => {},
    authTimeoutMs = AUTH_TIMEOUT_MS, maxPending = MAX_PENDING, log = () => {} }) {
    if (!token) throw new Error('the bridge needs a token (BRIDGE_TOKEN)')
    Object.assign(this, { token, onSend, onPresence, onReceived, authTimeoutMs, maxPending, log })
    this.clients = new Set()
    this.pending = new Map() // message id -> frame, in arrival order
    this.state = 'disconnected'
    this.qr = null
  }

  attach (conn) {
    const client = { conn, authed: false }
    client.timer = setTimeout(() => this._refuse(client, 'no auth frame in time'), this.authTimeoutMs)
    client.timer.unref?.()
    this.clients.add(client)
    return {
      message: (text) => this._message(client, text),
      closed: () => { clearTimeout(client.timer); this.clients.delete(client) }
    }
  }

  /** A WhatsApp message for nanoclaw: kept until a client confirms it. */
  publish (frame) {
    this.pending.set(frame.id, frame)
    while (this.pending.size > this.maxPending) {
      const oldest = this.pending.keys().next().value
      this.log(`dropping unconfirmed message ${oldest}: more than ${this.maxPending} waiting`)
      this.pending.delete(oldest)
    }
    this._broadcast(frame)
  }

  setStatus (state) {
    this.state = state
    if (state === 'connected') this.qr = null
    this._broadcast({ type: 'status', state })
  }

  showQr (qr) {
    this.qr = qr
    this._broadcast({ type: 'qr', qr })
  }

  get authed () {
    return [...this.clients].filter((c) => c.authed).length
  }

  _broadcast (frame) {
    for (const c of this.clients) if (c.authed) this._send(c, frame)
  }

  _send (client, frame) {
    try {
      client.conn.send(JSON.stringify(frame))
    } catch (e) {
      this.log(`cannot write to a client: ${e.message}`)
    }
  }

  _refuse (client, why) {
    this.log(`refusing a client: ${why}`)
    clearTimeout(client.timer)
    this.clients.delete(client)
    try { client.conn.close(CLOSE_UNAUTHORIZED, 'unauthorized') } catch {}
  }

  _message (client, text) {
    let frame
    try {
      frame = JSON.parse(text)
      if (!frame || typeof frame !== 'object' || Array.isArray(frame)) throw new Error('not an object')
    } catch (e) {
      if (!client.authed) return this._refuse(client, 'the first frame is not JSON')
      return this._send(client, { type: 'error', error: `not a JSON object: ${e.message}` })
    }
    if (!client.authed) {
      if (frame.type !== 'auth') return this._refuse(client, `expected auth, got ${frame.type}`)
      if (!sameToken(frame.token, this.token)) return this._refuse(client, 'wrong token')
      client.authed = true
      clearTimeout(client.timer)
      this._send(client, { type: 'status', state: this.state })
      if (this.qr) this._send(client, { type: 'qr', qr: this.qr })
      for (const waiting of this.pending.values()) this._send(client, waiting)
      return
    }
    switch (frame.type) {
      case 'send':
        return Promise.resolve()
          .then(() => this.onSend(frame))
          .catch((e) => ({ ok: false, error: e.message || String(e) }))
          .then((answer) => this._send(client, { type: 'ack', id: frame.id, ...answer }))
      case 'presence':
        return Promise.resolve()
          .then(() => this.onPresence(frame))
          .catch((e) => this.log(`presence for ${frame.to} failed: ${e.message}`))
      case 'received':
        this.pending.delete(frame.id)
        try { this.onReceived(frame.id) } catch (e) { this.log(`cannot forget ${frame.id}: ${e.message}`) }
        return
      case 'auth':
        return
      default:
        return this._send(client, { type: 'error', error: `unknown frame type ${frame.type}` })
    }
  }
}
