package sidecar

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// listen opens a unix listener at a fresh path. With accept, every
// connection is accepted and held open without a byte written back, like a
// process that is not a D-Bus peer; without, connections wait in the
// kernel's backlog and are never accepted.
func listen(t *testing.T, accept bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bus")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	if accept {
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return path
}

// stale leaves a socket file nobody listens on, as a crashed daemon does.
func stale(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "private")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	return path
}

func TestNoSystemd(t *testing.T) {
	const timeout = 100 * time.Millisecond
	tests := []struct {
		name      string
		private   func(t *testing.T) string
		systemBus func(t *testing.T) string // nil: no fallback
		want      []string                  // in the error, besides the common text
	}{
		{
			name:    "no socket file",
			private: func(t *testing.T) string { return filepath.Join(t.TempDir(), "run/systemd/private") },
			want:    []string{"private: no such file"},
		},
		{
			name:    "stale socket file",
			private: stale,
			want:    []string{"connection refused"},
		},
		{
			name: "regular file instead of a socket",
			private: func(t *testing.T) string {
				p := filepath.Join(t.TempDir(), "private")
				if err := os.WriteFile(p, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				return p
			},
			want: []string{"connection refused"},
		},
		{
			name:    "listener that never accepts",
			private: func(t *testing.T) string { return listen(t, false) },
			want:    []string{"no D-Bus answer within 100ms"},
		},
		{
			name:    "listener that accepts but never speaks D-Bus",
			private: func(t *testing.T) string { return listen(t, true) },
			want:    []string{"no D-Bus answer within 100ms"},
		},
		{
			name:      "system bus fallback silent too",
			private:   func(t *testing.T) string { return filepath.Join(t.TempDir(), "private") },
			systemBus: func(t *testing.T) string { return listen(t, true) },
			want:      []string{"private: no such file", "bus: no D-Bus answer within 100ms"},
		},
		{
			name:      "missing system bus is not tried",
			private:   func(t *testing.T) string { return filepath.Join(t.TempDir(), "private") },
			systemBus: func(t *testing.T) string { return filepath.Join(t.TempDir(), "system_bus_socket") },
			want:      []string{"(" + "%PRIVATE%" + ": no such file)"},
		},
	}
	ops := []struct {
		name string
		call func(context.Context, *Manager) error
	}{
		{"state", func(ctx context.Context, m *Manager) error { _, err := m.State(ctx); return err }},
		{"start", func(ctx context.Context, m *Manager) error { _, err := m.Start(ctx); return err }},
		{"stop", func(ctx context.Context, m *Manager) error { _, err := m.Stop(ctx); return err }},
		{"restart", func(ctx context.Context, m *Manager) error { _, err := m.Restart(ctx); return err }},
		{"daemon-reload", func(ctx context.Context, m *Manager) error { return m.DaemonReload(ctx) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{SystemdSocket: tt.private(t), ConnectTimeout: timeout}
			if tt.systemBus != nil {
				opts.SystemBusSocket = tt.systemBus(t)
			}
			m := New(testLogger(t), opts)
			for _, op := range ops {
				err := op.call(context.Background(), m)
				if !errors.Is(err, ErrNoSystemd) {
					t.Fatalf("%s: got error %v, want one wrapping ErrNoSystemd", op.name, err)
				}
				want := append([]string{"systemd is not reachable over D-Bus", opts.SystemdSocket,
					"the sidecar needs a systemd host (PID 1)"}, tt.want...)
				for _, w := range want {
					w = strings.ReplaceAll(w, "%PRIVATE%", opts.SystemdSocket)
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: got error %q, want it to contain %q", op.name, err, w)
					}
				}
			}
		})
	}
}

func TestConnectCancelled(t *testing.T) {
	tests := []struct {
		name    string
		private func(t *testing.T) string
	}{
		{name: "missing socket", private: func(t *testing.T) string { return filepath.Join(t.TempDir(), "private") }},
		{name: "silent listener", private: func(t *testing.T) string { return listen(t, true) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(testLogger(t), Options{SystemdSocket: tt.private(t), ConnectTimeout: time.Hour})
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := m.State(ctx)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("got error %v, want context.Canceled", err)
			}
			if errors.Is(err, ErrNoSystemd) {
				t.Errorf("got error %v, want it not to blame systemd for the caller's cancellation", err)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Options
		want Options
	}{
		{
			name: "zero value",
			want: Options{Unit: "istio.service", SystemdSocket: "/run/systemd/private",
				SystemBusSocket: "/run/dbus/system_bus_socket", ConnectTimeout: 5 * time.Second,
				Root: "/", Journalctl: "journalctl", PollInterval: 250 * time.Millisecond},
		},
		{
			name: "custom private socket has no fallback",
			in:   Options{SystemdSocket: "/x/private", Unit: "other.service", Root: "/vm"},
			want: Options{Unit: "other.service", SystemdSocket: "/x/private", ConnectTimeout: 5 * time.Second,
				Root: "/vm", Journalctl: "journalctl", PollInterval: 250 * time.Millisecond},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := New(testLogger(t), tt.in).opts; got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCallError(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		is     error
		want   string
		notIs  error
		noWant string
	}{
		{
			name: "no such unit",
			err:  dbus.Error{Name: "org.freedesktop.systemd1.NoSuchUnit", Body: []any{"Unit istio.service not found."}},
			is:   ErrUnitNotFound,
			want: `start istio.service: unit not found (Unit istio.service not found.); install it with "hostctl vm onboard"`,
		},
		{
			name: "no such unit as pointer",
			err:  &dbus.Error{Name: "org.freedesktop.systemd1.NoSuchUnit", Body: []any{"Unit istio.service not found."}},
			is:   ErrUnitNotFound,
			want: "unit not found",
		},
		{
			name: "access denied",
			err:  dbus.Error{Name: "org.freedesktop.DBus.Error.AccessDenied", Body: []any{"Access denied"}},
			want: "vmagent must run as root",
		},
		{
			name:  "other error kept",
			err:   errors.New("connection closed"),
			want:  "start istio.service: connection closed",
			notIs: ErrUnitNotFound,
		},
	}
	m := New(testLogger(t), Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := m.callError("start", tt.err)
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("got %v, want it to wrap %v", err, tt.is)
			}
			if tt.notIs != nil && errors.Is(err, tt.notIs) {
				t.Errorf("got %v, want it not to wrap %v", err, tt.notIs)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestJobError(t *testing.T) {
	tests := []struct {
		name string
		err  *JobError
		want string
	}{
		{
			name: "failed start with service result",
			err: &JobError{Op: "start", Unit: "istio.service", Result: "failed",
				State: State{ActiveState: "failed", SubState: "failed", Result: "exit-code"}},
			want: `start istio.service: systemd job ended with result "failed" (unit failed/failed, service result exit-code); run "hostctl vm logs" to see why`,
		},
		{
			name: "timeout without state",
			err:  &JobError{Op: "stop", Unit: "istio.service", Result: "timeout"},
			want: `stop istio.service: systemd job ended with result "timeout"; run "hostctl vm logs" to see why`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error = tt.err
			if got := err.Error(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if !errors.Is(err, ErrJobFailed) {
				t.Errorf("got errors.Is(err, ErrJobFailed) false, want true")
			}
		})
	}
}

var systemdRoot = flag.String("systemd-root", "",
	"root of a running systemd to test the unit lifecycle against: / on a systemd host, /proc/PID/root for a systemd-nspawn "+
		"container booted with --boot; the test writes, starts and removes meshvm-test-*.service units there")

// realSystemd returns the root of a running systemd: -systemd-root, else /
// when this machine booted with systemd.
func realSystemd(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for systemd's private bus")
	}
	if *systemdRoot != "" {
		return *systemdRoot
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("systemd is not PID 1 on this machine (/run/systemd/system is missing) and -systemd-root is not set; " +
			"the lab VM covers this path")
	}
	return "/"
}

func realOptions(root, unit string) Options {
	return Options{
		Unit:            unit,
		SystemdSocket:   filepath.Join(root, "run/systemd/private"),
		SystemBusSocket: filepath.Join(root, "run/dbus/system_bus_socket"),
		Root:            root,
	}
}

// TestRealSystemd reads the state of units of a real systemd.
func TestRealSystemd(t *testing.T) {
	root := realSystemd(t)
	tests := []struct {
		name       string
		unit       string
		socket     string // empty: systemd's private socket
		wantLoad   string
		wantActive string
		wantPID    bool
	}{
		{name: "journald runs", unit: "systemd-journald.service", wantLoad: "loaded", wantActive: "active", wantPID: true},
		{name: "unknown unit", unit: "meshvm-no-such-unit.service", wantLoad: "not-found", wantActive: "inactive"},
		{name: "over the system bus", unit: "systemd-journald.service", socket: "missing", wantLoad: "loaded", wantActive: "active", wantPID: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := realOptions(root, tt.unit)
			if tt.socket != "" {
				opts.SystemdSocket = filepath.Join(t.TempDir(), tt.socket)
				if _, err := os.Stat(opts.SystemBusSocket); err != nil {
					t.Skipf("no system bus at %s", opts.SystemBusSocket)
				}
			}
			st, err := New(testLogger(t), opts).State(context.Background())
			if err != nil {
				t.Fatalf("State: %v", err)
			}
			if st.Unit != tt.unit || st.LoadState != tt.wantLoad || st.ActiveState != tt.wantActive {
				t.Errorf("got %s %s/%s, want %s %s/%s", st.Unit, st.LoadState, st.ActiveState, tt.unit, tt.wantLoad, tt.wantActive)
			}
			if tt.wantPID && (st.MainPID == 0 || st.ActiveSince.IsZero()) {
				t.Errorf("got MainPID %d, ActiveSince %v; want a running process and its start time", st.MainPID, st.ActiveSince)
			}
		})
	}
}

// TestRealLifecycle drives units through daemon-reload, start, restart and
// stop on the systemd at -systemd-root.
func TestRealLifecycle(t *testing.T) {
	if *systemdRoot == "" {
		t.Skip("writes units into a systemd: set -systemd-root (e.g. /proc/PID/root of a systemd-nspawn --boot container)")
	}
	root := realSystemd(t)
	suffix := strconv.Itoa(os.Getpid())
	units := map[string]string{
		"meshvm-test-sleep-" + suffix + ".service": "[Service]\nExecStart=/bin/sleep infinity\n",
		"meshvm-test-fail-" + suffix + ".service":  "[Service]\nType=oneshot\nExecStart=/bin/false\n",
	}
	sleepUnit, failUnit := "meshvm-test-sleep-"+suffix+".service", "meshvm-test-fail-"+suffix+".service"
	dir := filepath.Join(root, "etc/systemd/system")
	for name, content := range units {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	sleep := New(testLogger(t), realOptions(root, sleepUnit))
	t.Cleanup(func() {
		_, _ = sleep.Stop(ctx)
		for name := range units {
			os.Remove(filepath.Join(dir, name))
		}
		if err := sleep.DaemonReload(ctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := sleep.DaemonReload(ctx); err != nil {
		t.Fatalf("DaemonReload: %v", err)
	}

	var lastPID uint32
	steps := []struct {
		name    string
		m       *Manager
		do      func(*Manager, context.Context) (State, error)
		active  string
		sub     string
		running bool
		is      error
	}{
		{name: "loaded after reload", m: sleep, do: (*Manager).State, active: "inactive", sub: "dead"},
		{name: "start", m: sleep, do: (*Manager).Start, active: "active", sub: "running", running: true},
		{name: "start again is a no-op", m: sleep, do: (*Manager).Start, active: "active", sub: "running", running: true},
		{name: "restart gives a new process", m: sleep, do: (*Manager).Restart, active: "active", sub: "running", running: true},
		{name: "stop", m: sleep, do: (*Manager).Stop, active: "inactive", sub: "dead"},
		{name: "failing start", m: New(testLogger(t), realOptions(root, failUnit)), do: (*Manager).Start, active: "failed", sub: "failed", is: ErrJobFailed},
		{name: "unknown unit", m: New(testLogger(t), realOptions(root, "meshvm-no-such-unit.service")), do: (*Manager).Start, is: ErrUnitNotFound},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			got, err := st.do(st.m, ctx)
			if st.is != nil {
				if !errors.Is(err, st.is) {
					t.Fatalf("got error %v, want %v", err, st.is)
				}
				t.Logf("error: %v", err)
			} else if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if st.active != "" && (got.ActiveState != st.active || got.SubState != st.sub) {
				t.Errorf("got %s/%s, want %s/%s", got.ActiveState, got.SubState, st.active, st.sub)
			}
			if st.running {
				if got.MainPID == 0 || got.ActiveSince.IsZero() {
					t.Errorf("got MainPID %d, ActiveSince %v; want a process and its start time", got.MainPID, got.ActiveSince)
				}
				if st.name == "restart gives a new process" && got.MainPID == lastPID {
					t.Errorf("got MainPID %d after restart, want a new one", got.MainPID)
				}
				lastPID = got.MainPID
			}
		})
	}

	t.Run("journal of the failed unit", func(t *testing.T) {
		// journald writes asynchronously: follow until systemd's line lands.
		const want = "Failed with result 'exit-code'"
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var got []string
		err := New(testLogger(t), realOptions(root, failUnit)).Logs(ctx, Journal, -1, true, func(lines []LogLine) error {
			for _, l := range lines {
				got = append(got, l.Text)
				if strings.Contains(l.Text, want) {
					cancel()
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("Logs: %v", err)
		}
		if !slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("got %q, want a line containing %q", got, want)
		}
	})
}
