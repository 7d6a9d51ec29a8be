// From a Baileys message object (WAMessage: key, message, messageTimestamp, pushName) to the JSON
// nanoclaw reads: {type: "message", id, chat, sender, phone, text, media, kind, timestamp,
// isGroup, mentioned, name}. Attachments are saved by the saveMedia function passed in, and
// nanoclaw gets their paths.

export const MAX_MEDIA_BYTES = 25 * 1024 * 1024

// Containers that only wrap the real content (disappearing, view-once, captioned documents…).
const WRAPPERS = ['ephemeralMessage', 'viewOnceMessage', 'viewOnceMessageV2',
  'viewOnceMessageV2Extension', 'documentWithCaptionMessage', 'deviceSentMessage']

// message field -> [our kind, default file name]
const MEDIA = {
  imageMessage: ['image', 'image'],
  stickerMessage: ['image', 'sticker'],
  audioMessage: ['audio', 'audio'],
  documentMessage: ['document', 'document'],
  videoMessage: ['document', 'video']
}

const EXTENSIONS = {
  'image/jpeg': '.jpg', 'image/png': '.png', 'image/webp': '.webp', 'image/gif': '.gif',
  'audio/ogg': '.ogg', 'audio/mpeg': '.mp3', 'audio/mp4': '.m4a', 'audio/aac': '.aac',
  'audio/wav': '.wav', 'video/mp4': '.mp4', 'application/pdf': '.pdf', 'text/plain': '.txt'
}

export function unwrap (message) {
  let content = message
  for (let depth = 0; content && depth < 5; depth++) {
    const wrapper = WRAPPERS.find((w) => content[w]?.message)
    if (!wrapper) break
    content = content[wrapper].message
  }
  return content || null
}

/** "123@s.whatsapp.net" for "123:4@s.whatsapp.net": the user, without the device. */
export const bare = (jid) => typeof jid === 'string' && jid.includes('@')
  ? `${jid.split('@')[0].split(':')[0]}@${jid.split('@')[1]}`
  : ''

const isPhoneJid = (jid) => typeof jid === 'string' && /@(s\.whatsapp\.net|c\.us)$/.test(jid)

/** "+4915112345678" for a phone-number jid ("4915112345678:3@s.whatsapp.net"), else "". */
export function phoneOf (jid) {
  return isPhoneJid(jid) ? '+' + jid.split('@')[0].split(':')[0] : ''
}

/** A plain number from a protobuf Long (or one read back from JSON), a number or a string. */
export function num (value) {
  if (value == null) return 0
  if (typeof value.toNumber === 'function') return value.toNumber()
  if (typeof value === 'object' && 'low' in value) return (value.high >>> 0) * 2 ** 32 + (value.low >>> 0)
  return Number(value)
}

export function textOf (content) {
  return content.conversation || content.extendedTextMessage?.text ||
    content.imageMessage?.caption || content.videoMessage?.caption ||
    content.documentMessage?.caption || ''
}

/** [kind, field, the media part, a file name] for a message's content. */
export function mediaOf (content) {
  for (const [field, [kind, fallback]] of Object.entries(MEDIA)) {
    const media = content[field]
    if (!media) continue
    const type = (media.mimetype || '').split(';')[0].trim()
    let name = media.fileName || fallback + (EXTENSIONS[type] || '')
    if (field === 'audioMessage' && media.ptt) name = 'voice-note.ogg'
    return [kind, field, media, name]
  }
  return ['text', null, null, null]
}

/** Whether a message @mentions one of our own jids, or replies to one of our messages. */
export function mentions (content, self) {
  const me = new Set(self.map(bare).filter(Boolean))
  const context = Object.values(content).find((part) => part?.contextInfo)?.contextInfo
  return Boolean(context) && ((context.mentionedJid || []).some((jid) => me.has(bare(jid))) ||
    me.has(bare(context.participant)))
}

/** The frame for nanoclaw, or null for what it should not see: our own messages, status
 * updates, channels, broadcasts, and messages with neither text nor media (reactions, receipts,
 * protocol messages). pnFor(lidJid) may give the phone jid behind a LID; self lists our own jids
 * (phone and LID), for `mentioned` (the "@…" of us is taken out of the text). */
export async function toBridgeMessage (m, { saveMedia, pnFor = async () => null, self = [] }) {
  const key = m?.key || {}
  const chat = key.remoteJid || ''
  if (!chat || key.fromMe || /@(broadcast|newsletter)$/.test(chat)) return null
  const content = unwrap(m.message)
  if (!content) return null
  const isGroup = chat.endsWith('@g.us')
  const sender = (isGroup ? key.participant : chat) || ''
  let pn = [sender, isGroup ? key.participantAlt : key.remoteJidAlt].find(isPhoneJid)
  if (!pn && sender.endsWith('@lid')) pn = await pnFor(sender).catch(() => null)
  let text = textOf(content)
  const mentioned = mentions(content, self)
  for (const jid of self.map(bare).filter(Boolean)) {
    const tag = `@${jid.split('@')[0]}`
    if (text.includes(tag)) text = text.replaceAll(tag, '').replace(/ {2,}/g, ' ')
  }
  const [kind, , media, name] = mediaOf(content)
  const paths = []
  if (media && (!isGroup || mentioned)) { // group chatter is not ours to download
    const size = num(media.fileLength)
    if (size > MAX_MEDIA_BYTES) {
      text += `\n[${name}: ${Math.round(size / 1048576)} MB, too large to download]`
    } else {
      try {
        paths.push(await saveMedia(m, kind, name))
      } catch (e) {
        text += `\n[${name} could not be downloaded: ${e.message}]`
      }
    }
  }
  text = text.trim()
  if (!text && !paths.length) return null
  return {
    type: 'message',
    id: key.id,
    chat,
    sender,
    phone: phoneOf(pn),
    text,
    media: paths,
    kind,
    timestamp: num(m.messageTimestamp),
    isGroup,
    mentioned,
    name: m.pushName || ''
  }
}

// Write a download to `path` as it arrives, counting the bytes: past `limit` it stops, the part
// written is removed, and it throws. The size a sender announces (fileLength) is the sender's
// word; what comes down the wire is counted, so a lie cannot fill the Pi's memory or disk.
export async function saveBounded (stream, path, limit = MAX_MEDIA_BYTES) {
  const { createWriteStream } = await import('node:fs')
  const { rm } = await import('node:fs/promises')
  const { Transform } = await import('node:stream')
  const { pipeline } = await import('node:stream/promises')
  let size = 0
  const count = new Transform({
    transform (chunk, _, done) {
      size += chunk.length
      done(size > limit ? new Error(`larger than ${Math.round(limit / 1048576)} MB`) : null, chunk)
    }
  })
  try {
    await pipeline(stream, count, createWriteStream(path, { mode: 0o600 }))
  } catch (e) {
    await rm(path, { force: true })
    throw e
  }
  return path
}
