package procs

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStartFindStop(t *testing.T) {
	d := Dir(t.TempDir())
	pid, err := d.Start(Spec{Name: "sleep", Bin: "sleep", Args: []string{"300"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := d.Running("sleep"); !ok || got != pid {
		t.Fatalf("Running: got %d %v, want %d", got, ok, pid)
	}
	if _, ok := d.Running("other"); ok {
		t.Error("a process never started reported running")
	}
	if err := d.Stop(context.Background(), "sleep", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if Alive(pid) {
		t.Errorf("pid %d alive after Stop", pid)
	}
	if _, ok := d.Running("sleep"); ok {
		t.Error("still reported running after Stop")
	}
	// A process that dies at once is reported with its log, not waited for.
	pid, _ = d.Start(Spec{Name: "false", Bin: "false"})
	err = d.WaitReady(context.Background(), "false", pid, time.Minute, func(context.Context) error { return context.DeadlineExceeded })
	if err == nil || !strings.Contains(err.Error(), "exited while starting") {
		t.Errorf("got %v, want an exit report", err)
	}
}

// A PID file whose process was replaced by another with the same PID (here:
// the same PID, another start time) is not reported running, even when the
// new program's command line carries the name.
func TestReusedPIDIsNotRunning(t *testing.T) {
	d := Dir(t.TempDir())
	pid, err := d.Start(Spec{Name: "sleep", Bin: "sleep", Args: []string{"300"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(context.Background(), "sleep", 5*time.Second)
	st, ok := startTime(pid)
	if !ok {
		t.Fatal("no start time for a running process")
	}
	if err := os.WriteFile(d.pidPath("sleep"), []byte(fmt.Sprintf("%d %s1\n", pid, st)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Running("sleep"); ok {
		t.Error("a PID with another start time reported running")
	}
	// An older PID file (PID only) still finds it by its command line.
	if err := os.WriteFile(d.pidPath("sleep"), []byte(fmt.Sprintf("%d\n", pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, ok := d.Running("sleep"); !ok || got != pid {
		t.Errorf("PID-only file: got %d %v, want %d", got, ok, pid)
	}
}

// A started process carries no descriptor of its starter beyond stdio:
// not the lab lock a test runs under.
func TestStartedProcessInheritsNoDescriptor(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("no /proc")
	}
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil { // not close-on-exec, as flock(1) hands its lock down
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	inherited, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", p[0]))
	d := Dir(t.TempDir())
	pid, err := d.Start(Spec{Name: "sleeper", Bin: "/bin/sleep", Args: []string{"30"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(context.Background(), "sleeper", time.Second)
	for i := 0; i < 50; i++ { // until it has exec'd: a forked child still holds everything
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasPrefix(string(b), "/bin/sleep") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == inherited {
			t.Errorf("the started process holds the starter's %s as fd %s", l, fd.Name())
		}
	}
}
