// The bridge's kept messages: on disk until nanoclaw confirms them.
import assert from 'node:assert/strict'
import test from 'node:test'
import { existsSync, mkdtempSync, readdirSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Kept } from '../lib/kept.js'

// As Baileys' BufferJSON does: bytes survive the trip through JSON.
const replacer = (k, v) => v instanceof Uint8Array || v?.type === 'Buffer' ? { type: 'Buffer', data: Buffer.from(v.data || v).toString('base64') } : v
const reviver = (k, v) => v?.type === 'Buffer' && typeof v.data === 'string' ? Buffer.from(v.data, 'base64') : v

test('kept messages come back in the order they came, bytes and all, until dropped', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'kept-')), 'pending')
  const kept = new Kept(dir, { replacer, reviver })
  const first = { key: { id: '3EB0/AA' }, message: { imageMessage: { mediaKey: new Uint8Array([1, 2, 255]) } } }
  kept.keep('3EB0/AA', first)
  kept.keep('BB', { key: { id: 'BB' } })
  utimesSync(kept.path('3EB0/AA'), 1, 1) // the older one
  const [a, b] = new Kept(dir, { replacer, reviver }).all() // as after a restart
  assert.equal(a.key.id, '3EB0/AA')
  assert.deepEqual([...a.message.imageMessage.mediaKey], [1, 2, 255])
  assert.equal(b.key.id, 'BB')
  kept.drop('3EB0/AA')
  kept.drop('3EB0/AA') // twice: nothing happens
  assert.deepEqual(kept.all().map((m) => m.key.id), ['BB'])
  assert.ok(!readdirSync(dir).some((n) => n.endsWith('.tmp')))
})

test('a torn or foreign file is skipped and said, the rest still read', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kept-'))
  const kept = new Kept(dir)
  kept.keep('ok', { key: { id: 'ok' } })
  writeFileSync(join(dir, 'torn.json'), '{"key": {')
  const said = []
  assert.deepEqual(kept.all((s) => said.push(s)).map((m) => m.key.id), ['ok'])
  assert.equal(said.length, 1)
  assert.ok(!existsSync(join(dir, 'nothing')) && new Kept(join(dir, 'nothing')).all().length === 0)
})
