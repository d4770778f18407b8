// Package sidecar controls the istio systemd unit that runs pilot-agent and
// Envoy on the VM, and reads its logs.
//
// The unit is driven through systemd's D-Bus API (go-systemd's dbus
// package), first over systemd's private socket, which needs no
// dbus-daemon, then over the system bus. Every call opens its own
// connection and closes it before returning, so a systemd restart or
// daemon-reexec never leaves the agent holding a dead connection. Dialing
// and authentication are bounded by Options.ConnectTimeout: a host without
// systemd gives ErrNoSystemd quickly instead of hanging.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Defaults for Options.
const (
	DefaultUnit            = "istio.service"
	DefaultSystemdSocket   = "/run/systemd/private"
	DefaultSystemBusSocket = "/run/dbus/system_bus_socket"
	DefaultConnectTimeout  = 5 * time.Second
	DefaultPollInterval    = 250 * time.Millisecond
)

// ErrNoSystemd reports that systemd could not be reached over D-Bus: the
// host (or container) does not run systemd as PID 1, or its sockets are not
// visible to the agent.
var ErrNoSystemd = errors.New("systemd is not reachable over D-Bus")

// ErrUnitNotFound reports that systemd has no unit by that name.
var ErrUnitNotFound = errors.New("unit not found")

// ErrJobFailed reports that a start, stop or restart job did not end in
// "done"; the error is a *JobError carrying the result.
var ErrJobFailed = errors.New("systemd job failed")

// Options configures a Manager. The zero value manages istio.service on
// the local systemd.
type Options struct {
	// Unit is the unit to manage; default DefaultUnit.
	Unit string
	// SystemdSocket is systemd's private D-Bus socket; default
	// DefaultSystemdSocket.
	SystemdSocket string
	// SystemBusSocket is tried when SystemdSocket cannot be reached, if the
	// file exists. Empty means DefaultSystemBusSocket when SystemdSocket is
	// empty too, and no fallback when SystemdSocket is set, so a test that
	// points SystemdSocket elsewhere never reaches the host's systemd.
	SystemBusSocket string
	// ConnectTimeout bounds dialing and authenticating one socket; default
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Root is the VM's filesystem root for the log files and the journal;
	// default "/".
	Root string
	// Journalctl is the journalctl binary, a name looked up in PATH or a
	// path; default "journalctl".
	Journalctl string
	// PollInterval is how often a followed log file is checked for new
	// lines; default DefaultPollInterval.
	PollInterval time.Duration
}

// Manager controls one systemd unit.
type Manager struct {
	log  *slog.Logger
	opts Options
}

// New returns a Manager with opts' defaults filled in.
func New(logger *slog.Logger, opts Options) *Manager {
	if opts.Unit == "" {
		opts.Unit = DefaultUnit
	}
	if opts.SystemdSocket == "" {
		opts.SystemdSocket = DefaultSystemdSocket
		if opts.SystemBusSocket == "" {
			opts.SystemBusSocket = DefaultSystemBusSocket
		}
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.Root == "" {
		opts.Root = "/"
	}
	if opts.Journalctl == "" {
		opts.Journalctl = "journalctl"
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	return &Manager{log: logger.With("unit", opts.Unit), opts: opts}
}

// State is the unit as systemd sees it (`systemctl show`).
type State struct {
	Unit          string
	LoadState     string // loaded, not-found, bad-setting, masked, ...
	ActiveState   string // active, inactive, failed, activating, deactivating, reloading
	SubState      string // running, dead, failed, auto-restart, ...
	UnitFileState string // enabled, disabled, static, ... ; empty when there is no unit file
	// Result is the service's last result: success, exit-code, signal,
	// timeout, core-dump, start-limit-hit, ...
	Result  string
	MainPID uint32
	// ActiveSince is when the unit last became active; zero unless it is
	// active or reloading now.
	ActiveSince time.Time
	// Restarts counts automatic restarts (NRestarts) since the unit was
	// last started by hand.
	Restarts uint32
}

// State reads the unit's state. A unit systemd does not know is not an
// error: its LoadState is "not-found".
func (m *Manager) State(ctx context.Context) (State, error) {
	c, err := m.connect(ctx)
	if err != nil {
		return State{Unit: m.opts.Unit}, err
	}
	defer c.Close()
	return m.state(ctx, c)
}

func (m *Manager) state(ctx context.Context, c *sddbus.Conn) (State, error) {
	st := State{Unit: m.opts.Unit}
	props, err := c.GetAllPropertiesContext(ctx, m.opts.Unit)
	if err != nil {
		return st, m.callError("read the state of", err)
	}
	st.LoadState, _ = props["LoadState"].(string)
	st.ActiveState, _ = props["ActiveState"].(string)
	st.SubState, _ = props["SubState"].(string)
	st.UnitFileState, _ = props["UnitFileState"].(string)
	st.Result, _ = props["Result"].(string)
	st.MainPID, _ = props["MainPID"].(uint32)
	st.Restarts, _ = props["NRestarts"].(uint32)
	if us, _ := props["ActiveEnterTimestamp"].(uint64); us > 0 && (st.ActiveState == "active" || st.ActiveState == "reloading") {
		st.ActiveSince = time.UnixMicro(int64(us))
	}
	return st, nil
}

// JobError is a start, stop or restart whose systemd job ended with a
// result other than done. errors.Is(err, ErrJobFailed) holds for it.
type JobError struct {
	Op     string // start, stop, restart
	Unit   string
	Result string // canceled, timeout, failed, dependency, ...
	State  State  // read after the job ended
}

func (e *JobError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: systemd job ended with result %q", e.Op, e.Unit, e.Result)
	if e.State.ActiveState != "" {
		fmt.Fprintf(&b, " (unit %s/%s", e.State.ActiveState, e.State.SubState)
		if e.State.Result != "" && e.State.Result != "success" {
			fmt.Fprintf(&b, ", service result %s", e.State.Result)
		}
		b.WriteString(")")
	}
	b.WriteString(`; run "hostctl vm logs" to see why`)
	return b.String()
}

// Is makes errors.Is(err, ErrJobFailed) true.
func (e *JobError) Is(target error) bool { return target == ErrJobFailed }

type jobFunc func(c *sddbus.Conn, ctx context.Context, name, mode string, ch chan<- string) (int, error)

// Start starts the unit and waits for systemd's job to finish. For a
// Type=simple service that means the process was spawned, not that it is
// healthy. ctx bounds the wait.
func (m *Manager) Start(ctx context.Context) (State, error) {
	return m.job(ctx, "start", (*sddbus.Conn).StartUnitContext)
}

// Stop stops the unit and waits for the job; this can take as long as the
// unit's TimeoutStopSec (30s for istio.service) plus ExecStopPost.
func (m *Manager) Stop(ctx context.Context) (State, error) {
	return m.job(ctx, "stop", (*sddbus.Conn).StopUnitContext)
}

// Restart restarts the unit, starting it if it is stopped, and waits for
// the job.
func (m *Manager) Restart(ctx context.Context) (State, error) {
	return m.job(ctx, "restart", (*sddbus.Conn).RestartUnitContext)
}

func (m *Manager) job(ctx context.Context, op string, call jobFunc) (State, error) {
	c, err := m.connect(ctx)
	if err != nil {
		return State{Unit: m.opts.Unit}, err
	}
	defer c.Close()

	// Buffered: go-systemd's signal dispatcher must never block on us.
	done := make(chan string, 1)
	id, err := call(c, ctx, m.opts.Unit, "replace", done)
	if err != nil {
		st, _ := m.state(ctx, c)
		return st, m.callError(op, err)
	}
	m.log.Debug("systemd job queued", "op", op, "job", id)
	var result string
	select {
	case result = <-done:
	case <-ctx.Done():
		return State{Unit: m.opts.Unit}, fmt.Errorf("%s %s: %w while waiting for systemd job %d; the job goes on without us, check the unit with \"hostctl vm status\"", op, m.opts.Unit, ctx.Err(), id)
	}
	st, err := m.state(ctx, c)
	m.log.Info("systemd job finished", "op", op, "job", id, "result", result, "active", st.ActiveState, "sub", st.SubState)
	if result != "done" && result != "skipped" {
		return st, &JobError{Op: op, Unit: m.opts.Unit, Result: result, State: st}
	}
	return st, err
}

// DaemonReload makes systemd re-read unit files (systemctl daemon-reload)
// and returns once it has.
func (m *Manager) DaemonReload(ctx context.Context) error {
	c, err := m.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.ReloadContext(ctx); err != nil {
		return fmt.Errorf("reload systemd: %w", err)
	}
	return nil
}

// callError names a D-Bus error from systemd for the user.
func (m *Manager) callError(op string, err error) error {
	var de dbus.Error
	var dep *dbus.Error
	if errors.As(err, &dep) {
		de = *dep
	} else if !errors.As(err, &de) {
		return fmt.Errorf("%s %s: %w", op, m.opts.Unit, err)
	}
	msg := ""
	if len(de.Body) > 0 {
		msg, _ = de.Body[0].(string)
	}
	switch de.Name {
	case "org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed":
		return fmt.Errorf("%s %s: %w (%s); install it with \"hostctl vm onboard\"", op, m.opts.Unit, ErrUnitNotFound, msg)
	case "org.freedesktop.systemd1.UnitMasked":
		return fmt.Errorf("%s %s: %w: the unit is masked; unmask it with systemctl unmask %s", op, m.opts.Unit, err, m.opts.Unit)
	case "org.freedesktop.DBus.Error.AccessDenied", "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired":
		return fmt.Errorf("%s %s: %w; vmagent must run as root to control units", op, m.opts.Unit, err)
	}
	return fmt.Errorf("%s %s: %w", op, m.opts.Unit, err)
}

// endpoint is one socket systemd may answer on.
type endpoint struct {
	path  string
	hello bool // a bus daemon needs Hello; systemd's private socket does not
}

func (m *Manager) endpoints() []endpoint {
	eps := []endpoint{{path: m.opts.SystemdSocket}}
	if p := m.opts.SystemBusSocket; p != "" && p != m.opts.SystemdSocket {
		if _, err := os.Stat(p); err == nil {
			eps = append(eps, endpoint{path: p, hello: true})
		}
	}
	return eps
}

// connect opens a go-systemd connection on the first endpoint that answers.
// The connection is closed when ctx is done, and by the caller.
func (m *Manager) connect(ctx context.Context) (*sddbus.Conn, error) {
	var reasons []string
	for _, ep := range m.endpoints() {
		c, err := sddbus.NewConnection(func() (*dbus.Conn, error) { return m.dial(ctx, ep) })
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to systemd at %s: %w", ep.path, ctx.Err())
		}
		m.log.Debug("systemd not reachable", "socket", ep.path, "err", err)
		reasons = append(reasons, ep.path+": "+m.describe(err))
	}
	return nil, fmt.Errorf("%w (%s); the sidecar needs a systemd host (PID 1)", ErrNoSystemd, strings.Join(reasons, "; "))
}

// dial connects and authenticates to one socket within ConnectTimeout.
func (m *Manager) dial(ctx context.Context, ep endpoint) (*dbus.Conn, error) {
	deadline := time.Now().Add(m.opts.ConnectTimeout)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "unix", ep.path)
	if err != nil {
		return nil, err
	}
	uc := nc.(*net.UnixConn)
	// The deadline bounds the handshake with a peer that accepts but never
	// speaks D-Bus; it is lifted once systemd has answered.
	if err := uc.SetDeadline(deadline); err != nil {
		uc.Close()
		return nil, err
	}
	conn, err := dbus.DialUnix(uc, dbus.WithContext(ctx))
	if err != nil {
		uc.Close()
		return nil, err
	}
	// EXTERNAL with the numeric uid, as go-systemd does: no user lookup,
	// which a static binary could not do through NSS.
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		conn.Close()
		return nil, err
	}
	if ep.hello {
		if err := conn.Hello(); err != nil {
			conn.Close()
			return nil, err
		}
	}
	if err := uc.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// describe words a connection failure briefly.
func (m *Manager) describe(err error) string {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "no such file"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused, nothing listens on the socket"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no D-Bus answer within %s", m.opts.ConnectTimeout)
	case errors.Is(err, os.ErrPermission):
		return "permission denied; run vmagent as root"
	}
	return err.Error()
}
