package agentsim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/sidecar"
)

// Unit is the simulated VM's istio.service as systemd reports it.
type Unit struct {
	LoadState, ActiveState, SubState, UnitFileState, Result string
	MainPID                                                 uint32
	// ActiveSince is ActiveEnterTimestamp while active, zero otherwise.
	ActiveSince time.Time
	// Restarts is NRestarts: automatic restarts since the last start by hand.
	Restarts uint32
}

// Active says the unit runs.
func (u Unit) Active() bool { return u.ActiveState == "active" }

// pids hands out main PIDs, distinct across the fleet as on many hosts.
var pids atomic.Uint32

// unit is the one stand-in for systemd: it keeps the unit's state and moves
// it as systemd does for start, stop and restart, reading the unit file the
// agent's postinst wrote into the VM's root (no file: not-found).
type unit struct {
	root     string
	onChange func(Unit)

	mu sync.Mutex
	st Unit
	// broken: ExecStart fails, so a start leaves the unit failed.
	broken bool
}

func newUnit(root string, onChange func(Unit)) *unit {
	return &unit{root: root, onChange: onChange, st: Unit{ActiveState: "inactive", SubState: "dead"}}
}

// files reads what systemd would load: the unit file and its enable link.
func (u *unit) files() (load, fileState string) {
	if _, err := os.Lstat(filepath.Join(u.root, postinst.UnitPath)); errors.Is(err, fs.ErrNotExist) {
		return "not-found", ""
	}
	if _, err := os.Lstat(filepath.Join(u.root, postinst.UnitLink)); err == nil {
		return "loaded", "enabled"
	}
	return "loaded", "disabled"
}

func (u *unit) state() Unit {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.st.LoadState, u.st.UnitFileState = u.files()
	return u.st
}

// set moves the unit under its lock and tells onChange of the new state
// when the move changed it.
func (u *unit) set(move func(st *Unit) error) (Unit, error) {
	u.mu.Lock()
	u.st.LoadState, u.st.UnitFileState = u.files()
	before := u.st
	err := move(&u.st)
	st := u.st
	u.mu.Unlock()
	if st != before && u.onChange != nil {
		u.onChange(st)
	}
	return st, err
}

func started(st *Unit, now time.Time) {
	st.ActiveState, st.SubState, st.Result = "active", "running", "success"
	st.MainPID = 1000 + pids.Add(1)
	st.ActiveSince = now
}

func (u *unit) start(op string, restart bool) (Unit, error) {
	return u.set(func(st *Unit) error {
		if st.LoadState == "not-found" {
			return fmt.Errorf("%s %s: %w (Unit %s not found.); install it with \"hostctl vm onboard\"", op, sidecar.DefaultUnit, sidecar.ErrUnitNotFound, sidecar.DefaultUnit)
		}
		if st.Active() && !restart {
			return nil // systemd: starting an active unit is a no-op job
		}
		if u.broken {
			st.ActiveState, st.SubState, st.Result, st.MainPID, st.ActiveSince = "failed", "failed", "exit-code", 0, time.Time{}
			return fmt.Errorf("%s %s: Job for %s failed because the control process exited with error code", op, sidecar.DefaultUnit, sidecar.DefaultUnit)
		}
		st.Restarts = 0 // a start by hand resets NRestarts
		started(st, time.Now())
		return nil
	})
}

func (u *unit) stop() (Unit, error) {
	return u.set(func(st *Unit) error {
		if st.Active() {
			st.Result = "success"
		}
		st.ActiveState, st.SubState, st.MainPID, st.ActiveSince = "inactive", "dead", 0, time.Time{}
		return nil
	})
}

// crash is the main process dying under Restart=always: systemd starts it
// again at once and counts the restart.
func (u *unit) crash() (Unit, error) {
	return u.set(func(st *Unit) error {
		if !st.Active() {
			return fmt.Errorf("%s is %s: nothing to crash", sidecar.DefaultUnit, st.ActiveState)
		}
		started(st, time.Now())
		st.Restarts++
		return nil
	})
}

// breakStart makes every later start fail, as a sidecar whose binary
// cannot run (ExecStart exits with an error); a running unit keeps running.
func (u *unit) breakStart() {
	u.mu.Lock()
	u.broken = true
	u.mu.Unlock()
}

// fail is the main process exiting with an error and systemd giving up
// (start-limit-hit): the unit is failed until started again.
func (u *unit) fail() (Unit, error) {
	return u.set(func(st *Unit) error {
		st.ActiveState, st.SubState, st.Result, st.MainPID, st.ActiveSince = "failed", "failed", "exit-code", 0, time.Time{}
		return nil
	})
}

func toState(u Unit) sidecar.State {
	return sidecar.State{Unit: sidecar.DefaultUnit, LoadState: u.LoadState, ActiveState: u.ActiveState, SubState: u.SubState,
		UnitFileState: u.UnitFileState, Result: u.Result, MainPID: u.MainPID, ActiveSince: u.ActiveSince, Restarts: u.Restarts}
}

// manager is the agent's view of the unit (server.Sidecar).
type manager struct{ u *unit }

func (m manager) State(context.Context) (sidecar.State, error) { return toState(m.u.state()), nil }

func (m manager) Start(context.Context) (sidecar.State, error) {
	st, err := m.u.start("start", false)
	return toState(st), err
}

func (m manager) Stop(context.Context) (sidecar.State, error) {
	st, err := m.u.stop()
	return toState(st), err
}

func (m manager) Restart(context.Context) (sidecar.State, error) {
	st, err := m.u.start("restart", true)
	return toState(st), err
}

func (m manager) Logs(context.Context, sidecar.LogSource, int, bool, func([]sidecar.LogLine) error) error {
	return errors.New("read logs: a simulated VM runs no sidecar and keeps no journal; read a real VM's logs")
}
