// Package capbuf holds what a program the agent runs writes, up to a cap:
// a program's output must not grow the agent without bound.
package capbuf

import "bytes"

// Buffer keeps the first Max bytes written and counts the rest. Writes
// never fail, so the program is not cut off mid-run by a broken pipe.
type Buffer struct {
	Max int
	// OnOverflow, when set, is called once, at the first byte past Max
	// (to end the program early: its output is too much to use).
	OnOverflow func()
	buf        bytes.Buffer
	dropped    int64
}

// New returns a Buffer that keeps max bytes.
func New(max int) *Buffer { return &Buffer{Max: max} }

func (b *Buffer) Write(p []byte) (int, error) {
	keep := min(len(p), b.Max-b.buf.Len())
	b.buf.Write(p[:keep])
	if keep < len(p) {
		if b.dropped == 0 && b.OnOverflow != nil {
			b.OnOverflow()
		}
		b.dropped += int64(len(p) - keep)
	}
	return len(p), nil
}

// Bytes is what was kept.
func (b *Buffer) Bytes() []byte { return b.buf.Bytes() }

// String is what was kept, as text.
func (b *Buffer) String() string { return b.buf.String() }

// Truncated says whether anything past Max was dropped.
func (b *Buffer) Truncated() bool { return b.dropped > 0 }
