// Messages WhatsApp has delivered (Baileys acks them to WhatsApp at once) are kept on disk here
// until nanoclaw confirms them, so a kill, a power cut or a restart between the two loses none.
// Each is one JSON file, written whole (a temporary file, fsynced, renamed) under the message id.
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs'
import { join } from 'node:path'

export class Kept {
  /** `replacer` and `reviver` carry what JSON cannot (Baileys' BufferJSON: media keys). */
  constructor (dir, { replacer, reviver } = {}) {
    Object.assign(this, { dir, replacer, reviver })
  }

  path (id) {
    return join(this.dir, `${String(id).replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 100)}.json`)
  }

  keep (id, message) {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 })
    const tmp = this.path(id) + '.tmp'
    const fd = openSync(tmp, 'w', 0o600)
    try {
      writeSync(fd, JSON.stringify(message, this.replacer))
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    renameSync(tmp, this.path(id))
  }

  drop (id) {
    try { unlinkSync(this.path(id)) } catch (e) { if (e.code !== 'ENOENT') throw e }
  }

  /** The kept messages, oldest first; a file that cannot be read is skipped (and said). */
  all (say = () => {}) {
    let names
    try { names = readdirSync(this.dir).filter((n) => n.endsWith('.json')) } catch { return [] }
    const files = names.map((n) => join(this.dir, n))
      .map((f) => [f, statSync(f, { throwIfNoEntry: false })?.mtimeMs]).filter(([, t]) => t !== undefined)
    const out = []
    for (const [f] of files.sort((a, b) => a[1] - b[1])) {
      try { out.push(JSON.parse(readFileSync(f, 'utf8'), this.reviver)) } catch (e) { say(`cannot read ${f}: ${e.message}`) }
    }
    return out
  }
}
