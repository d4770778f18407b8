package procs

import (
	"context"
	"strings"
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
