// Messages WhatsApp has delivered (Baileys acks them to WhatsApp at once) are kept on disk here
// until nanoclaw confirms them, so a kill, a power cut or a restart between the two loses none.
// Each is one JSON file, written whole (a temporary file, fsynced, renamed, the folder fsynced)
// under the message id. Protobuf fields come back as JSON gives them (bytes as base64, longs as
// strings): the caller turns them back (proto.Message.fromObject).
import { createHash } from 'node:crypto'
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs'
import { join } from 'node:path'

function syncWrite (file, text) {
  const fd = openSync(file, 'w', 0o600)
  try {
    writeSync(fd, text)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

export class Kept {
  constructor (dir) {
    this.dir = dir
  }

  /** A readable part of the id and a digest of all of it: ids alike but not equal never meet. */
  path (id) {
    const digest = createHash('sha256').update(String(id)).digest('hex').slice(0, 16)
    return join(this.dir, `${String(id).replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 60)}-${digest}.json`)
  }

  keep (id, message) {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 })
    syncWrite(this.path(id) + '.tmp', JSON.stringify(message))
    renameSync(this.path(id) + '.tmp', this.path(id))
    const fd = openSync(this.dir, 'r') // its name too survives a power cut
    try { fsyncSync(fd) } finally { closeSync(fd) }
  }

  drop (id) {
    try { unlinkSync(this.path(id)) } catch (e) { if (e.code !== 'ENOENT') throw e }
  }

  /** The kept messages, oldest first; a file that cannot be read is moved aside (and said). */
  all (say = () => {}) {
    let names
    try { names = readdirSync(this.dir).filter((n) => n.endsWith('.json')) } catch { return [] }
    const files = names.map((n) => join(this.dir, n))
      .map((f) => [f, statSync(f, { throwIfNoEntry: false })?.mtimeMs]).filter(([, t]) => t !== undefined)
    const out = []
    for (const [f] of files.sort((a, b) => a[1] - b[1])) {
      try {
        out.push(JSON.parse(readFileSync(f, 'utf8')))
      } catch (e) {
        say(`cannot read ${f} (${e.message}); moved aside as .bad`)
        try { renameSync(f, f.replace(/\.json$/, '.bad')) } catch {}
      }
    }
    return out
  }
}
