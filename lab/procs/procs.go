// Package procs supervises the lab's long-running local processes (etcd,
// kube-apiserver, istiod, ...): each runs detached in its own session so it
// outlives the command that started it, with its PID and log in a state
// directory, so a later command finds, reuses or stops it.
package procs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Dir holds logs/<name>.log and run/<name>.pid.
type Dir string

// LogPath is where a process's output goes.
func (d Dir) LogPath(name string) string { return filepath.Join(string(d), "logs", name+".log") }

func (d Dir) pidPath(name string) string { return filepath.Join(string(d), "run", name+".pid") }

// Spec is a process to start.
type Spec struct {
	Name string
	Bin  string
	Args []string
	// Env is added to the current environment; Cwd defaults to the Dir.
	Env []string
	Cwd string
}

// Sum digests what a process is started with, and extra: a change to any
// of it means a restart.
func (s Spec) Sum(extra string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%q\n%q\n%s\n", s.Bin, s.Args, s.Env, extra)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Start launches s detached and records its PID.
func (d Dir) Start(s Spec) (int, error) {
	for _, sub := range []string{"logs", "run"} {
		if err := os.MkdirAll(filepath.Join(string(d), sub), 0o700); err != nil {
			return 0, err
		}
	}
	logf, err := os.OpenFile(d.LogPath(s.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	closeInherited()
	cmd := exec.Command(s.Bin, s.Args...)
	cmd.Dir = s.Cwd
	if cmd.Dir == "" {
		cmd.Dir = string(d)
	}
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", s.Name, err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait() // reap it if it ends while this process lives
	// The start time with the PID names this process and no later one that
	// reuses the PID; it is set at fork, so it can be read at once (argv in
	// /proc/<pid>/cmdline is briefly empty while exec maps the program).
	rec := strconv.Itoa(pid)
	if st, ok := startTime(pid); ok {
		rec += " " + st
	}
	if err := os.WriteFile(d.pidPath(s.Name), []byte(rec+"\n"), 0o600); err != nil {
		return 0, err
	}
	return pid, nil
}

// Running reports the recorded PID if that process still runs the program.
func (d Dir) Running(name string) (int, bool) {
	data, err := os.ReadFile(d.pidPath(name))
	if err != nil {
		return 0, false
	}
	rec := strings.Fields(string(data))
	if len(rec) == 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(rec[0])
	if err != nil || !Alive(pid) {
		return 0, false
	}
	if len(rec) > 1 {
		if st, ok := startTime(pid); !ok || st != rec[1] {
			return 0, false // the PID was reused by something else
		}
		return pid, true
	}
	// A PID file without a start time (written by an older meshvm).
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), name) {
		return 0, false
	}
	return pid, true
}

// Alive reports whether pid runs (a zombie has exited).
func Alive(pid int) bool {
	f := statFields(pid)
	return len(f) > 0 && f[0] != "Z"
}

// startTime is field 22 of /proc/<pid>/stat: when the process started, in
// clock ticks since boot.
func startTime(pid int) (string, bool) {
	f := statFields(pid)
	if len(f) < 20 {
		return "", false
	}
	return f[19], true
}

// statFields are the fields of /proc/<pid>/stat from the state (field 3) on,
// after the parenthesised command name, which may hold spaces.
func statFields(pid int) []string {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	rest := string(stat)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	return strings.Fields(rest)
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL.
func (d Dir) Stop(ctx context.Context, name string, grace time.Duration) error {
	pid, ok := d.Running(name)
	if !ok {
		os.Remove(d.pidPath(name))
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for Alive(pid) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if Alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; Alive(pid) && i < 50; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if Alive(pid) {
		return fmt.Errorf("%s (pid %d) did not stop", name, pid)
	}
	return os.Remove(d.pidPath(name))
}

// WaitReady polls ready until it succeeds, the process dies, or timeout passes.
func (d Dir) WaitReady(ctx context.Context, name string, pid int, timeout time.Duration, ready func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		if !Alive(pid) {
			return fmt.Errorf("%s exited while starting: see %s", name, d.LogPath(name))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (%v): see %s", name, timeout, err, d.LogPath(name))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// closeInherited marks the descriptors this process inherited beyond stdio
// close-on-exec (Go marks only those it opens): a detached process must not
// carry them, above all the lab lock a test runs under (flock(1) hands it
// down), or one that outlives its test holds every later test off the lab.
// Where /proc is missing (macOS) there is nothing to mark.
func closeInherited() {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, fd := range fds {
		if n, err := strconv.Atoi(fd.Name()); err == nil && n > 2 {
			syscall.CloseOnExec(n)
		}
	}
}
