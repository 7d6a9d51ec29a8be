// The bridge's kept messages: on disk until nanoclaw confirms them.
import assert from 'node:assert/strict'
import test from 'node:test'
import { existsSync, mkdtempSync, readdirSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Kept } from '../lib/kept.js'

test('kept messages come back in the order they came, until dropped', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'kept-')), 'pending')
  const kept = new Kept(dir)
  kept.keep('3EB0/AA', { key: { id: '3EB0/AA' }, messageTimestamp: 1767225600 })
  kept.keep('BB', { key: { id: 'BB' } })
  utimesSync(kept.path('3EB0/AA'), 1, 1) // the older one
  const [a, b] = new Kept(dir).all() // as after a restart
  assert.deepEqual(a, { key: { id: '3EB0/AA' }, messageTimestamp: 1767225600 })
  assert.equal(b.key.id, 'BB')
  kept.drop('3EB0/AA')
  kept.drop('3EB0/AA') // twice: nothing happens
  assert.deepEqual(kept.all().map((m) => m.key.id), ['BB'])
  assert.ok(!readdirSync(dir).some((n) => n.endsWith('.tmp')))
})

test('ids alike but not equal get files of their own', () => {
  const kept = new Kept(mkdtempSync(join(tmpdir(), 'kept-')))
  kept.keep('A/B', { n: 1 })
  kept.keep('A_B', { n: 2 })
  assert.deepEqual(kept.all().map((m) => m.n).sort(), [1, 2])
})

test('a torn file is moved aside and said, the rest still read', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kept-'))
  const kept = new Kept(dir)
  kept.keep('ok', { key: { id: 'ok' } })
  writeFileSync(join(dir, 'torn.json'), '{"key": {')
  const said = []
  assert.deepEqual(kept.all((s) => said.push(s)).map((m) => m.key.id), ['ok'])
  assert.equal(said.length, 1)
  assert.ok(existsSync(join(dir, 'torn.bad')))
  assert.equal(new Kept(join(dir, 'nothing')).all().length, 0)
})
