// Baileys message objects (as messages.upsert delivers them) to the JSON nanoclaw reads.
import assert from 'node:assert/strict'
import test from 'node:test'
import { existsSync, mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { MAX_MEDIA_BYTES, phoneOf, saveBounded, toBridgeMessage, unwrap } from '../lib/mapping.js'

const ALICE = '4915112345678@s.whatsapp.net'
const ALICE_LID = '201234567890123@lid'
const GROUP = '120363041234567890@g.us'
const long = (n) => ({ low: n, high: 0, unsigned: true, toNumber: () => n }) // protobufjs Long

function msg (message, key = {}, extra = {}) {
  return { key: { remoteJid: ALICE, fromMe: false, id: '3EB0C0FFEE', ...key }, message, messageTimestamp: long(1767225600), pushName: 'Alice', ...extra }
}

// saveMedia as index.js passes it: records what it was asked for and hands back a path.
function saver () {
  const calls = []
  const save = async (m, kind, name) => { calls.push({ id: m.key.id, kind, name }); return `/home/pi/.nanoclaw/media/whatsapp/1-${name}` }
  save.calls = calls
  return save
}

test('a text in a direct chat', async () => {
  const frame = await toBridgeMessage(msg({ conversation: 'hello there' }), { saveMedia: saver() })
  assert.deepEqual(frame, {
    type: 'message', id: '3EB0C0FFEE', chat: ALICE, sender: ALICE, phone: '+4915112345678', text: 'hello there', media: [],
    kind: 'text', timestamp: 1767225600, isGroup: false, mentioned: false, name: 'Alice'
  })
})

test('in a group, a mention of us (by phone or LID) or a reply to us is flagged, and the @ taken out', async () => {
  const self = ['4915550000:12@s.whatsapp.net', '99887766554433:12@lid']
  const inGroup = (message) => msg(message, { remoteJid: GROUP, participant: ALICE })
  const byLid = inGroup({ extendedTextMessage: { text: '@99887766554433 what time is it?', contextInfo: { mentionedJid: ['99887766554433@lid'] } } })
  const frame = await toBridgeMessage(byLid, { saveMedia: saver(), self })
  assert.deepEqual([frame.mentioned, frame.text], [true, 'what time is it?'])
  const byPhone = inGroup({ extendedTextMessage: { text: 'hey @4915550000 look', contextInfo: { mentionedJid: ['4915550000@s.whatsapp.net'] } } })
  assert.equal((await toBridgeMessage(byPhone, { saveMedia: saver(), self })).text, 'hey look')
  const reply = inGroup({ extendedTextMessage: { text: 'and this?', contextInfo: { stanzaId: 'B1', participant: '99887766554433@lid' } } })
  assert.equal((await toBridgeMessage(reply, { saveMedia: saver(), self })).mentioned, true)
  const other = inGroup({ extendedTextMessage: { text: '@123 hi', contextInfo: { mentionedJid: ['123@s.whatsapp.net'] } } })
  const someoneElse = await toBridgeMessage(other, { saveMedia: saver(), self })
  assert.deepEqual([someoneElse.mentioned, someoneElse.text], [false, '@123 hi'])
  assert.equal((await toBridgeMessage(inGroup({ conversation: 'chatter' }), { saveMedia: saver(), self })).mentioned, false)
  const save = saver()
  const photo = await toBridgeMessage(inGroup({ imageMessage: { caption: 'holiday', mimetype: 'image/jpeg' } }), { saveMedia: save, self })
  assert.deepEqual([photo.media, save.calls], [[], []]) // group chatter is not downloaded
})

test('a reply (extended text) inside a disappearing-messages wrapper', async () => {
  const m = msg({ ephemeralMessage: { message: { extendedTextMessage: { text: 'quoted answer', contextInfo: { stanzaId: 'X' } } } } })
  assert.equal((await toBridgeMessage(m, { saveMedia: saver() })).text, 'quoted answer')
  assert.deepEqual(unwrap({ viewOnceMessageV2: { message: { imageMessage: { caption: 'c' } } } }), { imageMessage: { caption: 'c' } })
})

test('in a group: the sender is the participant, and the phone comes from its alternative jid', async () => {
  const m = msg({ conversation: 'hi all' }, { remoteJid: GROUP, participant: ALICE_LID, participantAlt: ALICE })
  const frame = await toBridgeMessage(m, { saveMedia: saver() })
  assert.equal(frame.chat, GROUP)
  assert.equal(frame.sender, ALICE_LID)
  assert.equal(frame.phone, '+4915112345678')
  assert.equal(frame.isGroup, true)
})

test('a chat addressed by LID: the phone from remoteJidAlt, else from the LID mapping, else none', async () => {
  const viaAlt = await toBridgeMessage(msg({ conversation: 'a' }, { remoteJid: ALICE_LID, remoteJidAlt: ALICE }), { saveMedia: saver() })
  assert.equal(viaAlt.phone, '+4915112345678')
  assert.equal(viaAlt.chat, ALICE_LID)
  const asked = []
  const pnFor = async (lid) => { asked.push(lid); return '4915112345678:7@s.whatsapp.net' }
  const viaMap = await toBridgeMessage(msg({ conversation: 'b' }, { remoteJid: ALICE_LID }), { saveMedia: saver(), pnFor })
  assert.equal(viaMap.phone, '+4915112345678')
  assert.deepEqual(asked, [ALICE_LID])
  const unknown = await toBridgeMessage(msg({ conversation: 'c' }, { remoteJid: ALICE_LID }), { saveMedia: saver(), pnFor: async () => { throw new Error('no mapping') } })
  assert.equal(unknown.phone, '')
  assert.equal(unknown.sender, ALICE_LID)
})

test('a photo with a caption is saved and passed as a path', async () => {
  const save = saver()
  const m = msg({ imageMessage: { caption: 'look', mimetype: 'image/jpeg', fileLength: long(2048), url: 'https://mmg.whatsapp.net/x' } })
  const frame = await toBridgeMessage(m, { saveMedia: save })
  assert.equal(frame.kind, 'image')
  assert.equal(frame.text, 'look')
  assert.deepEqual(frame.media, ['/home/pi/.nanoclaw/media/whatsapp/1-image.jpg'])
  assert.deepEqual(save.calls, [{ id: '3EB0C0FFEE', kind: 'image', name: 'image.jpg' }])
})

test('a voice note is audio named .ogg; a document keeps its name; a video is a document', async () => {
  const voice = await toBridgeMessage(msg({ audioMessage: { ptt: true, mimetype: 'audio/ogg; codecs=opus', seconds: 4, fileLength: 9000 } }), { saveMedia: saver() })
  assert.equal(voice.kind, 'audio')
  assert.equal(voice.text, '')
  assert.match(voice.media[0], /voice-note\.ogg$/)
  const doc = await toBridgeMessage(msg({ documentWithCaptionMessage: { message: { documentMessage: { fileName: 'taxes 2025.pdf', caption: 'please check', mimetype: 'application/pdf' } } } }), { saveMedia: saver() })
  assert.deepEqual([doc.kind, doc.text], ['document', 'please check'])
  assert.match(doc.media[0], /taxes 2025\.pdf$/)
  const video = await toBridgeMessage(msg({ videoMessage: { mimetype: 'video/mp4', caption: 'clip' } }), { saveMedia: saver() })
  assert.deepEqual([video.kind, video.text], ['document', 'clip'])
})

test('media too large or failing to download become a note in the text', async () => {
  const save = saver()
  const big = await toBridgeMessage(msg({ documentMessage: { fileName: 'movie.mkv', fileLength: long(MAX_MEDIA_BYTES + 1) } }), { saveMedia: save })
  assert.match(big.text, /movie\.mkv: 25 MB, too large/)
  assert.deepEqual([big.media, save.calls], [[], []])
  const broken = await toBridgeMessage(msg({ imageMessage: { mimetype: 'image/png' } }), { saveMedia: async () => { throw new Error('403 from the CDN') } })
  assert.match(broken.text, /image\.png could not be downloaded: 403 from the CDN/)
})

test('what nanoclaw must not see: our own messages, status, channels, reactions, empty content', async () => {
  const none = [
    msg({ conversation: 'sent by us' }, { fromMe: true }),
    msg({ conversation: 'my story' }, { remoteJid: 'status@broadcast', participant: ALICE }),
    msg({ conversation: 'news' }, { remoteJid: '120363000000000000@newsletter' }),
    msg({ reactionMessage: { text: '👍', key: { id: 'X' } } }),
    msg({ protocolMessage: { type: 0 } }),
    msg(null),
    { key: {}, message: { conversation: 'no chat' } }
  ]
  for (const m of none) assert.equal(await toBridgeMessage(m, { saveMedia: saver() }), null)
})

test('phone numbers only come from phone jids', () => {
  assert.equal(phoneOf('4915112345678:12@s.whatsapp.net'), '+4915112345678')
  assert.equal(phoneOf('15550001@c.us'), '+15550001')
  assert.equal(phoneOf(ALICE_LID), '')
  assert.equal(phoneOf(undefined), '')
})

test('a download is written as it comes and cut off past the limit, whatever size was announced', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'bridge-'))
  const small = join(dir, 'small.bin')
  await saveBounded(Readable.from([Buffer.from('ab'), Buffer.from('cd')]), small, 10)
  assert.equal(readFileSync(small, 'utf8'), 'abcd')
  const big = join(dir, 'big.bin') // a sender that announced a tiny file and sends on and on
  const endless = Readable.from((function * () { for (;;) yield Buffer.alloc(4096) })())
  await assert.rejects(saveBounded(endless, big, 10000), /larger than/)
  assert.equal(existsSync(big), false)
})
