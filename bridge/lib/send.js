// Sending for nanoclaw: a `send` frame becomes one text message and one message per file, sent
// through a Baileys socket (anything with sendMessage and sendPresenceUpdate). A frame sent again
// with the same id (nanoclaw retrying after a lost ack) does not send twice: what already went
// out is skipped, and a send still in progress is waited for.
import { existsSync } from 'node:fs'
import { basename, extname } from 'node:path'

export const RATE_LIMIT_WAIT_S = 30
const REMEMBER = 500

const TYPES = {
  '.jpg': ['image', 'image/jpeg'],
  '.jpeg': ['image', 'image/jpeg'],
  '.png': ['image', 'image/png'],
  '.webp': ['image', 'image/webp'],
  '.gif': ['image', 'image/gif'],
  '.mp4': ['video', 'video/mp4'],
  '.3gp': ['video', 'video/3gpp'],
  '.mov': ['video', 'video/quicktime'],
  '.ogg': ['audio', 'audio/ogg; codecs=opus'],
  '.opus': ['audio', 'audio/ogg; codecs=opus'],
  '.oga': ['audio', 'audio/ogg; codecs=opus'],
  '.mp3': ['audio', 'audio/mpeg'],
  '.m4a': ['audio', 'audio/mp4'],
  '.aac': ['audio', 'audio/aac'],
  '.wav': ['audio', 'audio/wav'],
  '.pdf': ['document', 'application/pdf'],
  '.txt': ['document', 'text/plain'],
  '.md': ['document', 'text/markdown'],
  '.csv': ['document', 'text/csv'],
  '.json': ['document', 'application/json'],
  '.zip': ['document', 'application/zip']
}

/** The jid to send to: a jid as it is, or a phone number (+E.164 or digits) as a user jid. */
export function toJid (to) {
  if (typeof to !== 'string') return null
  const phone = to.replace(/[\s()-]/g, '')
  if (/^\+?\d{6,20}$/.test(phone)) return `${phone.replace('+', '')}@s.whatsapp.net`
  return /^[^@\s]+@[a-z.]+$/.test(to) ? to : null
}

/** The Baileys message content for one local file. */
export function mediaContent (path) {
  const [kind, mimetype] = TYPES[extname(path).toLowerCase()] || ['document', 'application/octet-stream']
  const url = { url: path }
  if (kind === 'image') return { image: url, mimetype }
  if (kind === 'video') return { video: url, mimetype }
  if (kind === 'audio') return { audio: url, mimetype, ptt: mimetype.startsWith('audio/ogg') }
  return { document: url, mimetype, fileName: basename(path) }
}

/** What nanoclaw should do about a failed send: the error, and when it may retry. */
export function classify (err) {
  const status = err?.output?.statusCode ?? err?.data?.code ?? err?.statusCode
  const text = err?.message || String(err)
  if (Number(status) === 429 || /rate.?overlimit|too many/i.test(text)) {
    return { ok: false, error: `WhatsApp rate limit: ${text}`, retry_after: RATE_LIMIT_WAIT_S }
  }
  return { ok: false, error: text }
}

export class Sender {
  /** socket(): the current Baileys socket or null; connected(): whether it is logged in;
   * onSent(message): each message WhatsApp accepted (kept for Baileys' retry requests). */
  constructor ({ socket, connected, onSent = () => {}, exists = existsSync, remember = REMEMBER }) {
    Object.assign(this, { socket, connected, onSent, exists, remember })
    this.jobs = new Map() // frame id -> { done, running }
  }

  handle (frame) {
    const bad = this._check(frame)
    if (bad) return Promise.resolve({ ok: false, error: bad, permanent: true })
    let job = this.jobs.get(frame.id)
    if (!job) {
      job = { done: 0, running: null }
      this.jobs.set(frame.id, job)
      while (this.jobs.size > this.remember) this.jobs.delete(this.jobs.keys().next().value)
    }
    if (!job.running) {
      job.running = this._run(frame, job).finally(() => { job.running = null })
    }
    return job.running
  }

  async presence (frame) {
    const jid = toJid(frame.to)
    if (!jid || !this.connected()) return
    await this.socket().sendPresenceUpdate(frame.state === 'paused' ? 'paused' : 'composing', jid)
  }

  _check (frame) {
    if (!frame.id) return 'a send frame needs an id'
    if (!toJid(frame.to)) return `not a WhatsApp chat or phone number: ${JSON.stringify(frame.to)}`
    if (frame.text != null && typeof frame.text !== 'string') return 'text must be a string'
    const media = frame.media ?? []
    if (!Array.isArray(media) || media.some((p) => typeof p !== 'string')) return 'media must be a list of paths'
    const missing = media.find((p) => !this.exists(p))
    if (missing) return `no such file: ${missing}`
    if (!frame.text && !media.length) return 'nothing to send: no text and no media'
    return null
  }

  async _run (frame, job) {
    const jid = toJid(frame.to)
    const items = [...(frame.text ? [{ text: frame.text }] : []), ...(frame.media ?? []).map(mediaContent)]
    for (let i = job.done; i < items.length; i++) {
      if (!this.connected()) return { ok: false, error: 'the bridge is not connected to WhatsApp right now' }
      try {
        const sent = await this.socket().sendMessage(jid, items[i])
        if (sent) this.onSent(sent)
      } catch (err) {
        return classify(err)
      }
      job.done = i + 1
    }
    return { ok: true }
  }
}
