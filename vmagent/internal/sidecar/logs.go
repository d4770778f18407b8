package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/capbuf"
)

// LogSource selects which log Logs reads.
type LogSource int

const (
	// Journal is the unit's journal, read with journalctl.
	Journal LogSource = iota
	// ProxyLog is /var/log/istio/istio.log, pilot-agent's and Envoy's
	// stdout when istio-start.sh redirects it there.
	ProxyLog
	// ProxyErrLog is /var/log/istio/istio.err.log, their stderr.
	ProxyErrLog
)

// Log file paths, relative to Options.Root.
const (
	ProxyLogPath    = "var/log/istio/istio.log"
	ProxyErrLogPath = "var/log/istio/istio.err.log"
)

func (s LogSource) String() string {
	switch s {
	case Journal:
		return "journal"
	case ProxyLog:
		return "proxy-log"
	case ProxyErrLog:
		return "proxy-err-log"
	}
	return "LogSource(" + strconv.Itoa(int(s)) + ")"
}

// LogLine is one line of a log.
type LogLine struct {
	// Time is the journal's receive time, or the timestamp a file line
	// starts with (pilot-agent's "2006-01-02T15:04:05.000000Z", Envoy's
	// "[2006-01-02T15:04:05.000Z]"); zero when the line has none.
	Time time.Time
	// Text is the line without its newline, made valid UTF-8.
	Text string
}

// Limits on what one emit carries and how long a line may get.
const (
	maxBatchLines = 500
	maxBatchBytes = 256 << 10
	maxLineBytes  = 1 << 20 // longer lines are cut here
)

// Logs sends the last tail lines of src to emit (all of them when tail is
// negative, none when it is 0), in batches. With follow it then keeps
// sending lines as they are written until ctx is done, and returns nil. An
// error from emit stops Logs and is returned as is.
func (m *Manager) Logs(ctx context.Context, src LogSource, tail int, follow bool, emit func([]LogLine) error) error {
	var err error
	switch src {
	case Journal:
		err = m.journal(ctx, tail, follow, emit)
	case ProxyLog:
		err = m.file(ctx, ProxyLogPath, tail, follow, emit)
	case ProxyErrLog:
		err = m.file(ctx, ProxyErrLogPath, tail, follow, emit)
	default:
		return fmt.Errorf("read logs: unknown source %v; want journal, proxy-log or proxy-err-log", src)
	}
	if follow && ctx.Err() != nil {
		return nil // following ends when ctx does; a failed last emit is part of that
	}
	return err
}

// batcher gathers lines and hands them to emit in bounded batches.
type batcher struct {
	emit  func([]LogLine) error
	lines []LogLine
	bytes int
}

func (b *batcher) add(l LogLine) error {
	b.lines = append(b.lines, l)
	b.bytes += len(l.Text)
	if len(b.lines) >= maxBatchLines || b.bytes >= maxBatchBytes {
		return b.flush()
	}
	return nil
}

func (b *batcher) flush() error {
	if len(b.lines) == 0 {
		return nil
	}
	err := b.emit(b.lines)
	b.lines, b.bytes = nil, 0
	return err
}

// journal streams `journalctl -u UNIT -o json`.
func (m *Manager) journal(ctx context.Context, tail int, follow bool, emit func([]LogLine) error) error {
	bin, err := exec.LookPath(m.opts.Journalctl)
	if err != nil {
		return fmt.Errorf("read the journal of %s: %w; install journalctl (package systemd) or read the proxy log files instead", m.opts.Unit, err)
	}
	n := "all"
	if tail >= 0 {
		n = strconv.Itoa(tail)
	}
	// --all: without it journalctl writes null for fields over 4096 bytes.
	args := []string{"-u", m.opts.Unit, "-o", "json", "--all", "--no-pager", "-n", n}
	if follow {
		args = append(args, "-f")
	}
	if m.opts.Root != "/" {
		args = append(args, "--root", m.opts.Root)
	}

	parent := ctx
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")
	cmd.WaitDelay = 2 * time.Second
	stderr := capbuf.New(64 << 10)
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("read the journal of %s: %w", m.opts.Unit, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("read the journal of %s: start %s: %w", m.opts.Unit, bin, err)
	}
	m.log.Debug("reading journal", "args", args)

	b := &batcher{emit: emit}
	r := bufio.NewReaderSize(stdout, 64<<10)
	var loopErr error
	for {
		raw, err := readLine(r)
		if len(raw) > 0 {
			l, perr := parseJournalLine(raw)
			if perr != nil {
				loopErr = fmt.Errorf("read the journal of %s: %w", m.opts.Unit, perr)
				break
			}
			if loopErr = b.add(l); loopErr != nil {
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				loopErr = fmt.Errorf("read the journal of %s: %w", m.opts.Unit, err)
			}
			break
		}
		// Send what we have whenever journalctl pauses, so a follower sees
		// each line as it comes instead of when a batch fills.
		if r.Buffered() == 0 {
			if loopErr = b.flush(); loopErr != nil {
				break
			}
		}
	}
	if loopErr == nil {
		loopErr = b.flush()
	} else {
		cancel() // stop journalctl; we are done reading
	}
	waitErr := cmd.Wait()
	switch {
	case parent.Err() != nil && follow:
		return nil // following ends when the caller's ctx does
	case parent.Err() != nil:
		return fmt.Errorf("read the journal of %s: %w", m.opts.Unit, parent.Err())
	case loopErr != nil:
		return loopErr
	case waitErr != nil:
		return fmt.Errorf("read the journal of %s: journalctl: %w: %s", m.opts.Unit, waitErr, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// parseJournalLine reads one line of `journalctl -o json`. Per
// systemd.journal-fields(7) and journalctl(1): __REALTIME_TIMESTAMP is
// microseconds since the epoch as a decimal string; MESSAGE is a string, an
// array of byte values when it is not printable UTF-8, an array of those
// when the field repeats, or null when it was too large to show.
func parseJournalLine(raw []byte) (LogLine, error) {
	var e struct {
		Realtime string          `json:"__REALTIME_TIMESTAMP"`
		Message  json.RawMessage `json:"MESSAGE"`
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		return LogLine{}, fmt.Errorf("parse journalctl json line %.80q: %w", raw, err)
	}
	var l LogLine
	if e.Realtime != "" {
		us, err := strconv.ParseInt(e.Realtime, 10, 64)
		if err != nil {
			return LogLine{}, fmt.Errorf("parse journal timestamp %q: %w", e.Realtime, err)
		}
		l.Time = time.UnixMicro(us)
	}
	msg, err := journalField(e.Message)
	if err != nil {
		return LogLine{}, fmt.Errorf("parse journal MESSAGE %.80q: %w", e.Message, err)
	}
	l.Text = strings.ToValidUTF8(msg, "\uFFFD")
	return l, nil
}

func journalField(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return "", err
		}
		if len(elems) > 0 && isNumber(elems[0]) {
			var bs []byte
			for _, el := range elems {
				v, err := strconv.ParseUint(string(el), 10, 8)
				if err != nil {
					return "", fmt.Errorf("byte value %s: %w", el, err)
				}
				bs = append(bs, byte(v))
			}
			return string(bs), nil
		}
		parts := make([]string, 0, len(elems))
		for _, el := range elems {
			p, err := journalField(el)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, "\n"), nil
	}
	return "", fmt.Errorf("unexpected JSON %.20s", raw)
}

func isNumber(raw json.RawMessage) bool {
	return len(raw) > 0 && raw[0] >= '0' && raw[0] <= '9'
}

// readLine returns the next line without its newline, cut at maxLineBytes.
// At the end of input it returns the unterminated rest, if any, with io.EOF.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) <= maxLineBytes {
			line = append(line, chunk...)
		} else if len(line) < maxLineBytes {
			line = append(line, chunk[:maxLineBytes-len(line)]...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return bytes.TrimSuffix(line, []byte("\n")), err
	}
}

// fileLine turns one line of a log file into a LogLine.
func fileLine(raw []byte) LogLine {
	raw = bytes.TrimSuffix(raw, []byte("\r"))
	if len(raw) > maxLineBytes {
		raw = raw[:maxLineBytes]
	}
	text := strings.ToValidUTF8(string(raw), "\uFFFD")
	return LogLine{Time: leadingTime(text), Text: text}
}

// leadingTime parses an RFC 3339 timestamp that starts the line, bare
// (pilot-agent) or in brackets (Envoy access logs).
func leadingTime(s string) time.Time {
	tok, _, _ := strings.Cut(s, "\t")
	tok, _, _ = strings.Cut(tok, " ")
	tok = strings.TrimSuffix(strings.TrimPrefix(tok, "["), "]")
	if len(tok) < len("2006-01-02T15:04:05Z") || tok[4] != '-' {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, tok)
	if err != nil {
		return time.Time{}
	}
	return t
}

// maxBacklog bounds how far back a log file is read: /var/log/istio is
// istio-proxy's, so the file may be as large as the disk.
const maxBacklog = 32 << 20

// file sends the last tail lines of the log file at rel (below the root)
// and, with follow, polls it for more until ctx is done. The agent is root
// and istio-proxy owns the directory, so the file is opened as fsroot does:
// one name only (a hard link could name a file istio-proxy may not read),
// no symlinks (none to /etc/shadow or /dev/zero), regular files only (a
// FIFO never blocks the call), and no further back than maxBacklog. It copes
// with rotation (the name now holds another file: the old one is read to its
// end, then the new one from its start) and truncation (the file got
// shorter: read again from the start).
func (m *Manager) file(ctx context.Context, rel string, tail int, follow bool, emit func([]LogLine) error) error {
	p := "/" + rel
	root, err := fsroot.New(m.opts.Root)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	t, err := openTail(ctx, root, p, tail, &batcher{emit: emit})
	if err != nil {
		return err
	}
	defer func() { t.f.Close() }() // the file read last: rotation replaces t.f
	if err := t.read(); err != nil {
		return t.err(err)
	}
	if !follow {
		if err := t.endLine(); err != nil {
			return err
		}
		return t.b.flush()
	}
	if err := t.b.flush(); err != nil {
		return err
	}
	return m.follow(ctx, root, t)
}

// openTail opens p at the start of its last tail lines, looking no further
// back than maxBacklog.
func openTail(ctx context.Context, root *fsroot.Root, p string, tail int, b *batcher) (*fileTail, error) {
	f, err := root.OpenSingle(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: no such file: the sidecar has not written this log; its output may be in the journal instead (log source journal)", p)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	t := &fileTail{ctx: ctx, path: p, f: f, b: b}
	if err := t.seekTail(tail); err != nil {
		f.Close()
		return nil, t.err(err)
	}
	return t, nil
}

func (t *fileTail) seekTail(tail int) error {
	fi, err := t.f.Stat()
	if err != nil {
		return err
	}
	t.fi = fi
	base := max(0, fi.Size()-maxBacklog)
	start, err := tailOffset(io.NewSectionReader(t.f, base, fi.Size()-base), fi.Size()-base, tail)
	if err != nil {
		return err
	}
	start += base
	if _, err := t.f.Seek(start, io.SeekStart); err != nil {
		return err
	}
	t.offset = start
	if start > 0 && start == base {
		// Cut at the backlog's limit: drop the line it starts inside.
		var prev [1]byte
		if _, err := t.f.ReadAt(prev[:], start-1); err == nil && prev[0] != '\n' {
			t.skipping = true
		}
	}
	return nil
}

// follow reads what is appended every PollInterval until ctx is done,
// following the file through rotation and truncation.
func (m *Manager) follow(ctx context.Context, root *fsroot.Root, t *fileTail) error {
	tick := time.NewTicker(m.opts.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := t.read(); err != nil {
			return t.err(err)
		}
		if err := m.reopen(root, t); err != nil {
			return err
		}
		if err := t.b.flush(); err != nil {
			return err
		}
	}
}

// reopen looks at the file now at t's path: a new one (rotated) is read
// from its start, the same one shorter than what was read (truncated) from
// its new start; a missing one is waited for.
func (m *Manager) reopen(root *fsroot.Root, t *fileTail) error {
	nf, err := root.OpenSingle(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // rotated away and not yet recreated: wait for the new file
	}
	if err != nil {
		return t.err(err)
	}
	cur, err := nf.Stat()
	if err != nil {
		nf.Close()
		return t.err(err)
	}
	switch {
	case !os.SameFile(t.fi, cur):
		// The old file will not grow: its unterminated rest is a line.
		if err := t.endLine(); err != nil {
			nf.Close()
			return err
		}
		t.f.Close()
		m.log.Debug("log file rotated", "path", t.path)
		*t = fileTail{ctx: t.ctx, path: t.path, f: nf, fi: cur, b: t.b, buf: t.buf}
		if err := t.read(); err != nil {
			return t.err(err)
		}
	case cur.Size() < t.offset:
		nf.Close()
		m.log.Debug("log file truncated", "path", t.path, "size", cur.Size(), "offset", t.offset)
		if _, err := t.f.Seek(0, io.SeekStart); err != nil {
			return t.err(err)
		}
		t.offset, t.partial = 0, nil
		if err := t.read(); err != nil {
			return t.err(err)
		}
	default:
		nf.Close()
	}
	return nil
}

// endLine queues the unterminated rest as a line: the file will not grow.
func (t *fileTail) endLine() error {
	if len(t.partial) == 0 {
		return nil
	}
	err := t.b.add(fileLine(t.partial))
	t.partial = nil
	return err
}

func (t *fileTail) err(err error) error { return fmt.Errorf("read %s: %w", t.path, err) }

// fileTail reads complete lines from an open file as it grows.
type fileTail struct {
	ctx  context.Context // read stops when it is done
	path string
	f    *os.File
	fi   fs.FileInfo // f's, to tell a rotated file from it
	// skipping drops bytes up to the first newline: the read started mid-line.
	skipping bool
	offset   int64  // bytes consumed so far
	partial  []byte // an unterminated last line, waiting for its newline
	b        *batcher
	buf      []byte
}

// read consumes what was appended since the last read, queueing complete
// lines and keeping an unterminated rest in partial.
func (t *fileTail) read() error {
	if t.buf == nil {
		t.buf = make([]byte, 64<<10)
	}
	for t.ctx.Err() == nil {
		n, err := t.f.Read(t.buf)
		if n > 0 {
			t.offset += int64(n)
			data := t.buf[:n]
			if t.skipping {
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					continue
				}
				data, t.skipping = data[i+1:], false
			}
			for {
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					if len(t.partial) < maxLineBytes {
						t.partial = append(t.partial, data...)
					}
					break
				}
				line := data[:i]
				if len(t.partial) > 0 {
					line = append(t.partial, line...)
					t.partial = nil
				}
				if err := t.b.add(fileLine(line)); err != nil {
					return err
				}
				data = data[i+1:]
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// tailOffset returns where the last n lines of a file of the given size
// start: 0 when n is negative or the file has no more than n lines, size
// when n is 0. A final newline ends the last line; it does not start an
// empty one.
func tailOffset(f io.ReaderAt, size int64, n int) (int64, error) {
	if n < 0 {
		return 0, nil
	}
	if n == 0 {
		return size, nil
	}
	buf := make([]byte, 64<<10)
	pos := size
	last := true // the file's final byte
	for pos > 0 {
		chunk := min(int64(len(buf)), pos)
		pos -= chunk
		if _, err := f.ReadAt(buf[:chunk], pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := chunk - 1; i >= 0; i-- {
			if buf[i] != '\n' {
				last = false
				continue
			}
			if last {
				last = false
				continue
			}
			n--
			if n == 0 {
				return pos + i + 1, nil
			}
		}
	}
	return 0, nil
}
