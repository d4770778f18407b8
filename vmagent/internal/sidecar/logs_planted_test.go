package sidecar

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// within runs fn and fails the test if it does not return in time: no log
// read may hold a thread forever.
func within(t *testing.T, d time.Duration, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("still running after %v", d)
		return nil
	}
}

// /var/log/istio is istio-proxy's: what it plants at the log's name is
// refused, never followed to another file and never waited on.
func TestFileRefusesWhatTheProxyPlants(t *testing.T) {
	for _, tt := range []struct {
		name  string
		plant func(p string) error
		want  string
	}{
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "not a regular file"},
		{"link to a root-only file", func(p string) error {
			secret := filepath.Join(filepath.Dir(p), "shadow")
			os.WriteFile(secret, []byte("root:$6$secret\n"), 0o600)
			return os.Symlink(secret, p)
		}, "symbolic link"},
		{"link to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) }, "symbolic link"},
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }, "not a regular file"},
	} {
		for _, follow := range []bool{false, true} {
			t.Run(tt.name, func(t *testing.T) {
				root := t.TempDir()
				p := writeLog(t, root, ProxyLogPath, "")
				os.Remove(p)
				if err := tt.plant(p); err != nil {
					t.Fatal(err)
				}
				m := New(testLogger(t), Options{Root: root, PollInterval: 5 * time.Millisecond})
				c := newCollector()
				err := within(t, 5*time.Second, func() error { return m.Logs(context.Background(), ProxyLog, -1, follow, c.emit) })
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("follow=%v: got %v, want an error saying %q", follow, err, tt.want)
				}
				if got := strings.Join(c.all(), "\n"); strings.Contains(got, "secret") {
					t.Errorf("streamed the linked file: %q", got)
				}
			})
		}
	}
}

// A log as large as the disk is read no further back than maxBacklog, and
// starts on a whole line.
func TestFileBacklogIsBounded(t *testing.T) {
	root := t.TempDir()
	p := writeLog(t, root, ProxyLogPath, "")
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	f.Truncate(8 << 30) // 8 GiB of NULs, sparse
	f.WriteAt([]byte("\nlast line\n"), 8<<30)
	f.Close()
	m := New(testLogger(t), Options{Root: root})
	var got []string
	read := 0
	err := within(t, 20*time.Second, func() error {
		return m.Logs(context.Background(), ProxyLog, -1, false, func(l []LogLine) error {
			for _, x := range l {
				read += len(x.Text)
				got = append(got, x.Text)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if read > maxBacklog || len(got) == 0 || got[len(got)-1] != "last line" {
		t.Errorf("got %d bytes in %d lines ending %q, want at most %d ending with the last line", read, len(got), got[len(got)-1:], maxBacklog)
	}
}

// Cancelling the call stops the read at once, even in the middle of a
// backlog or while a follower waits.
func TestFileStopsWhenCancelled(t *testing.T) {
	root := t.TempDir()
	line := strings.Repeat("x", 100) + "\n"
	writeLog(t, root, ProxyLogPath, strings.Repeat(line, 300_000)) // 30 MB
	m := New(testLogger(t), Options{Root: root, PollInterval: 5 * time.Millisecond})

	ctx, cancel := context.WithCancel(context.Background())
	batches := 0
	err := within(t, 5*time.Second, func() error {
		return m.Logs(ctx, ProxyLog, -1, false, func([]LogLine) error {
			batches++
			cancel()
			return nil
		})
	})
	if batches > 2 {
		t.Errorf("got %d batches after the cancel, want the read to stop (err %v)", batches, err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err = within(t, 5*time.Second, func() error { return m.Logs(ctx, ProxyLog, 1, true, func([]LogLine) error { return nil }) })
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("follow: got %v, want a clean end", err)
	}
}
