package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testdata/journal-recorded.jsonl holds real `journalctl -o json` lines,
// recorded on the lab machine (systemd 252, Debian 12). It has no journald
// running, so systemd-journald was started by hand in a private mount
// namespace (`unshare -m`, tmpfs on /run/systemd and the journal dirs), fed
// with `systemd-cat -t pilot-agent` (stdout transport) and with datagrams in
// the native protocol on /run/systemd/journal/socket (binary, multi-line and
// repeated MESSAGE fields, and one over 4096 bytes), then read with
// `journalctl -o json -t pilot-agent` (no --all, so the long one is null).
func TestParseJournalLine(t *testing.T) {
	f, err := os.Open("testdata/journal-recorded.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recorded [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		recorded = append(recorded, slices.Clone(sc.Bytes()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		line     int
		wantUsec int64
		wantText string
	}{
		{name: "plain string", line: 0, wantUsec: 1795595357828800, wantText: "plain message from istio"},
		{name: "control byte escaped by the stdout transport", line: 1, wantUsec: 1795595357833805, wantText: `binary \x01 message`},
		{name: "pilot-agent line with tabs", line: 2, wantUsec: 1795595357838170, wantText: "2026-11-25T10:00:00.000000Z\tinfo\tFLAG: --concurrency=\"0\""},
		{name: "byte array with escape codes and invalid UTF-8", line: 5, wantUsec: 1795595368819535,
			wantText: "envoy \x1b[31merror\x1b[0m: café \uFFFD"},
		{name: "multi-line message", line: 6, wantUsec: 1795595368819880, wantText: "line one\nline two"},
		{name: "repeated field", line: 7, wantUsec: 1795595893205577, wantText: "first\nsecond"},
		{name: "null for a field over 4096 bytes", line: 8, wantUsec: 1795595893205866, wantText: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseJournalLine(recorded[tt.line])
			if err != nil {
				t.Fatalf("parse line %d: %v", tt.line, err)
			}
			if want := time.UnixMicro(tt.wantUsec); !got.Time.Equal(want) {
				t.Errorf("time: got %v, want %v", got.Time, want)
			}
			if got.Text != tt.wantText {
				t.Errorf("text: got %q, want %q", got.Text, tt.wantText)
			}
		})
	}

	bad := []struct {
		name string
		line string
	}{
		{name: "not json", line: "-- No entries --"},
		{name: "bad timestamp", line: `{"__REALTIME_TIMESTAMP":"soon","MESSAGE":"x"}`},
		{name: "byte out of range", line: `{"__REALTIME_TIMESTAMP":"1","MESSAGE":[300]}`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := parseJournalLine([]byte(tt.line)); err == nil {
				t.Errorf("got %+v, want an error", got)
			}
		})
	}
}

// collector gathers emitted lines and signals each batch.
type collector struct {
	batches chan []LogLine
}

func newCollector() *collector { return &collector{batches: make(chan []LogLine, 100)} }

func (c *collector) emit(lines []LogLine) error {
	c.batches <- slices.Clone(lines)
	return nil
}

// next blocks until n more lines arrived and returns their texts.
func (c *collector) next(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		for _, l := range <-c.batches {
			got = append(got, l.Text)
		}
	}
	return got
}

func (c *collector) all() []string {
	var got []string
	for {
		select {
		case b := <-c.batches:
			for _, l := range b {
				got = append(got, l.Text)
			}
		default:
			return got
		}
	}
}

func writeLog(t *testing.T, root, rel, content string) string {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileTail(t *testing.T) {
	var big strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&big, "line %05d %s\n", i, strings.Repeat("x", 20))
	}
	tests := []struct {
		name    string
		src     LogSource
		content string
		tail    int
		want    []string
	}{
		{name: "last two of three", src: ProxyLog, content: "a\nb\nc\n", tail: 2, want: []string{"b", "c"}},
		{name: "more asked than there are", src: ProxyLog, content: "a\nb\n", tail: 10, want: []string{"a", "b"}},
		{name: "exactly all", src: ProxyLog, content: "a\nb\n", tail: 2, want: []string{"a", "b"}},
		{name: "none", src: ProxyLog, content: "a\nb\n", tail: 0, want: nil},
		{name: "negative means all", src: ProxyErrLog, content: "a\nb\nc\n", tail: -1, want: []string{"a", "b", "c"}},
		{name: "unterminated last line", src: ProxyLog, content: "a\nb\nc", tail: 2, want: []string{"b", "c"}},
		{name: "empty lines count", src: ProxyLog, content: "a\n\n\nb\n", tail: 3, want: []string{"", "", "b"}},
		{name: "empty file", src: ProxyLog, content: "", tail: 5, want: nil},
		{name: "CRLF", src: ProxyLog, content: "a\r\nb\r\n", tail: 5, want: []string{"a", "b"}},
		{name: "invalid UTF-8 replaced", src: ProxyLog, content: "caf\xc3\xa9 \xff\n", tail: 1, want: []string{"café \uFFFD"}},
		{
			name: "across read chunks", src: ProxyLog, content: big.String(), tail: 3,
			want: []string{"line 19997 " + strings.Repeat("x", 20), "line 19998 " + strings.Repeat("x", 20), "line 19999 " + strings.Repeat("x", 20)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			rel := ProxyLogPath
			if tt.src == ProxyErrLog {
				rel = ProxyErrLogPath
			}
			writeLog(t, root, rel, tt.content)
			m := New(testLogger(t), Options{Root: root})
			c := newCollector()
			if err := m.Logs(context.Background(), tt.src, tt.tail, false, c.emit); err != nil {
				t.Fatalf("Logs: %v", err)
			}
			if got := c.all(); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFileBatches(t *testing.T) {
	var content strings.Builder
	for i := range 1200 {
		fmt.Fprintf(&content, "%d\n", i)
	}
	root := t.TempDir()
	writeLog(t, root, ProxyLogPath, content.String())
	m := New(testLogger(t), Options{Root: root})
	var sizes []int
	err := m.Logs(context.Background(), ProxyLog, -1, false, func(l []LogLine) error {
		sizes = append(sizes, len(l))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{500, 500, 200}; !slices.Equal(sizes, want) {
		t.Errorf("batch sizes: got %v, want %v", sizes, want)
	}
}

func TestFileLineTime(t *testing.T) {
	tests := []struct {
		name string
		line string
		want time.Time
	}{
		{name: "pilot-agent", line: "2026-11-25T10:00:00.123456Z\tinfo\tads\tADS: new connection",
			want: time.Date(2026, 11, 25, 10, 0, 0, 123456000, time.UTC)},
		{name: "envoy access log", line: `[2026-11-25T10:00:01.500Z] "GET /ready HTTP/1.1" 200`,
			want: time.Date(2026, 11, 25, 10, 0, 1, 500000000, time.UTC)},
		{name: "no timestamp", line: "Istio Agent starting", want: time.Time{}},
		{name: "not quite a timestamp", line: "2026-11-25 10:00:00 hello", want: time.Time{}},
		{name: "short", line: "ab", want: time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fileLine([]byte(tt.line)).Time; !got.Equal(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFileErrors(t *testing.T) {
	stop := errors.New("client went away")
	tests := []struct {
		name    string
		content *string
		emit    func([]LogLine) error
		is      error
		want    string
	}{
		{name: "missing file", want: "istio.log: no such file: the sidecar has not written this log"},
		{name: "emit error stops", content: new("a\nb\n"), emit: func([]LogLine) error { return stop }, is: stop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.content != nil {
				writeLog(t, root, ProxyLogPath, *tt.content)
			}
			emit := tt.emit
			if emit == nil {
				emit = newCollector().emit
			}
			m := New(testLogger(t), Options{Root: root})
			err := m.Logs(context.Background(), ProxyLog, 10, false, emit)
			if err == nil {
				t.Fatal("got no error, want one")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("got %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLogsUnknownSource(t *testing.T) {
	m := New(testLogger(t), Options{Root: t.TempDir()})
	err := m.Logs(context.Background(), LogSource(7), 10, false, newCollector().emit)
	if err == nil || !strings.Contains(err.Error(), "unknown source LogSource(7)") {
		t.Errorf("got %v, want an unknown source error", err)
	}
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestFileFollow runs one follow session through the steps in order: each
// changes the real file, then waits for exactly the lines it should bring.
func TestFileFollow(t *testing.T) {
	root := t.TempDir()
	path := writeLog(t, root, ProxyLogPath, "old 1\nold 2\nold 3\n")
	m := New(testLogger(t), Options{Root: root, PollInterval: 5 * time.Millisecond})
	c := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Logs(ctx, ProxyLog, 2, true, c.emit) }()

	if got, want := c.next(t, 2), []string{"old 2", "old 3"}; !slices.Equal(got, want) {
		t.Fatalf("initial tail: got %q, want %q", got, want)
	}
	steps := []struct {
		name   string
		change func(t *testing.T)
		want   []string
	}{
		{
			name:   "appended lines",
			change: func(t *testing.T) { appendTo(t, path, "new 1\nnew 2\n") },
			want:   []string{"new 1", "new 2"},
		},
		{
			name: "line written in two parts",
			change: func(t *testing.T) {
				appendTo(t, path, "half")
				appendTo(t, path, " and half\n")
			},
			want: []string{"half and half"},
		},
		{
			name: "truncated (copytruncate)",
			change: func(t *testing.T) {
				if err := os.Truncate(path, 0); err != nil {
					t.Fatal(err)
				}
				appendTo(t, path, "t\n")
			},
			want: []string{"t"},
		},
		{
			name: "rotated (rename and create)",
			change: func(t *testing.T) {
				if err := os.Rename(path, path+".1"); err != nil {
					t.Fatal(err)
				}
				writeLog(t, root, ProxyLogPath, "rotated 1\n")
			},
			want: []string{"rotated 1"},
		},
		{
			name:   "appended after rotation",
			change: func(t *testing.T) { appendTo(t, path, "rotated 2\n") },
			want:   []string{"rotated 2"},
		},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.change(t)
			if got := c.next(t, len(st.want)); !slices.Equal(got, st.want) {
				t.Errorf("got %q, want %q", got, st.want)
			}
		})
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Logs after cancel: got %v, want nil", err)
	}
	if extra := c.all(); len(extra) > 0 {
		t.Errorf("after the last step: got extra lines %q, want none", extra)
	}
}

// journalRemote is systemd-journal-remote, which writes real journal files
// from journal export format.
func journalRemote(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("journalctl"); err != nil {
		t.Skip("needs journalctl: apt-get install systemd")
	}
	for _, p := range []string{"/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("needs systemd-journal-remote to write journal files: apt-get install systemd-journal-remote")
	return ""
}

type entry struct {
	unit string
	usec int64
	msg  string
}

// writeJournal writes entries as a real journal file under
// root/var/log/journal, where `journalctl --root root` finds it.
func writeJournal(t *testing.T, remote, root, name string, entries []entry) {
	t.Helper()
	dir := filepath.Join(root, "var/log/journal/0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Export format: systemd.io/JOURNAL_EXPORT_FORMATS. Fields that are not
	// single-line text go as name, newline, little-endian length, bytes.
	var buf bytes.Buffer
	field := func(k, v string) {
		if strings.ContainsAny(v, "\n\x1b") {
			buf.WriteString(k + "\n")
			binary.Write(&buf, binary.LittleEndian, uint64(len(v)))
			buf.WriteString(v + "\n")
			return
		}
		buf.WriteString(k + "=" + v + "\n")
	}
	for _, e := range entries {
		field("__REALTIME_TIMESTAMP", fmt.Sprint(e.usec))
		field("__MONOTONIC_TIMESTAMP", fmt.Sprint(e.usec-1795000000000000))
		field("_BOOT_ID", "02385adc82c1474790b2904fb62f6dd2")
		field("_SYSTEMD_UNIT", e.unit)
		field("MESSAGE", e.msg)
		buf.WriteString("\n")
	}
	cmd := exec.Command(remote, "--output="+filepath.Join(dir, name+".journal"), "-")
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-journal-remote: %v: %s", err, out)
	}
}

var journalEntries = []entry{
	{unit: "istio.service", usec: 1795595368000000, msg: "2026-11-25T10:00:00.000000Z\tinfo\tStarting Istio Agent"},
	{unit: "other.service", usec: 1795595368100000, msg: "not the sidecar"},
	{unit: "istio.service", usec: 1795595368200000, msg: "envoy \x1b[31merror\x1b[0m"},
	{unit: "istio.service", usec: 1795595368300000, msg: "line one\nline two"},
}

func TestJournal(t *testing.T) {
	remote := journalRemote(t)
	root := t.TempDir()
	writeJournal(t, remote, root, "system", journalEntries)

	tests := []struct {
		name     string
		unit     string
		tail     int
		want     []string
		wantTime []int64
	}{
		{name: "last line", tail: 1, want: []string{"line one\nline two"}, wantTime: []int64{1795595368300000}},
		{name: "all lines of the unit", tail: -1,
			want:     []string{"2026-11-25T10:00:00.000000Z\tinfo\tStarting Istio Agent", "envoy \x1b[31merror\x1b[0m", "line one\nline two"},
			wantTime: []int64{1795595368000000, 1795595368200000, 1795595368300000}},
		{name: "none", tail: 0, want: nil},
		{name: "another unit", unit: "other.service", tail: 10, want: []string{"not the sidecar"}, wantTime: []int64{1795595368100000}},
		{name: "unit with no entries", unit: "absent.service", tail: 10, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(testLogger(t), Options{Root: root, Unit: tt.unit})
			var got []LogLine
			err := m.Logs(context.Background(), Journal, tt.tail, false, func(l []LogLine) error {
				got = append(got, l...)
				return nil
			})
			if err != nil {
				t.Fatalf("Logs: %v", err)
			}
			var texts []string
			var times []int64
			for _, l := range got {
				texts = append(texts, l.Text)
				times = append(times, l.Time.UnixMicro())
			}
			if !slices.Equal(texts, tt.want) {
				t.Errorf("text: got %q, want %q", texts, tt.want)
			}
			if tt.wantTime != nil && !slices.Equal(times, tt.wantTime) {
				t.Errorf("time: got %v, want %v", times, tt.wantTime)
			}
		})
	}
}

func TestJournalFollow(t *testing.T) {
	remote := journalRemote(t)
	root := t.TempDir()
	writeJournal(t, remote, root, "system", journalEntries)
	m := New(testLogger(t), Options{Root: root})
	c := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Logs(ctx, Journal, 1, true, c.emit) }()

	// journalctl -f sets up its inotify watch before printing, so once the
	// tail arrived, a new journal file is seen.
	if got, want := c.next(t, 1), []string{"line one\nline two"}; !slices.Equal(got, want) {
		t.Fatalf("initial tail: got %q, want %q", got, want)
	}
	writeJournal(t, remote, root, "system-2", []entry{
		{unit: "other.service", usec: 1795595369000000, msg: "still not the sidecar"},
		{unit: "istio.service", usec: 1795595369100000, msg: "after the tail"},
	})
	if got, want := c.next(t, 1), []string{"after the tail"}; !slices.Equal(got, want) {
		t.Errorf("followed: got %q, want %q", got, want)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Logs after cancel: got %v, want nil", err)
	}
}

func TestJournalctlErrors(t *testing.T) {
	tests := []struct {
		name       string
		journalctl func(t *testing.T) string
		want       []string
	}{
		{
			name:       "journalctl missing",
			journalctl: func(t *testing.T) string { return filepath.Join(t.TempDir(), "journalctl") },
			want:       []string{"read the journal of istio.service", "install journalctl"},
		},
		{
			name: "journalctl fails",
			journalctl: func(t *testing.T) string {
				if _, err := exec.LookPath("false"); err != nil {
					t.Skip("needs false(1)")
				}
				p, _ := exec.LookPath("false")
				return p
			},
			want: []string{"journalctl: exit status 1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(testLogger(t), Options{Root: t.TempDir(), Journalctl: tt.journalctl(t)})
			err := m.Logs(context.Background(), Journal, 10, false, newCollector().emit)
			if err == nil {
				t.Fatal("got no error, want one")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// A log file with a second name (a hard link istio-proxy could plant to a
// file it may not read) is refused, not read as root.
func TestFileWithOtherNamesIsRefused(t *testing.T) {
	root := t.TempDir()
	writeLog(t, root, ProxyLogPath, "secret\n")
	if err := os.Link(filepath.Join(root, ProxyLogPath), filepath.Join(root, "other-name")); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	err := New(testLogger(t), Options{Root: root}).Logs(context.Background(), ProxyLog, 10, false, c.emit)
	if err == nil || !strings.Contains(err.Error(), "hard links") {
		t.Fatalf("got %v, want the hard-linked log refused", err)
	}
}
