package machine

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// local runs commands on this host: the machine is the test's temp dir.
type local struct{ Provider }

func (local) Exec(ctx context.Context, _ string, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin = stdin
	return cmd.CombinedOutput()
}

func TestDiffering(t *testing.T) {
	dir := t.TempDir()
	same, changed, missing, spaced := filepath.Join(dir, "same"), filepath.Join(dir, "changed"), filepath.Join(dir, "missing"), filepath.Join(dir, "a b")
	os.WriteFile(same, []byte("one"), 0o600)
	os.WriteFile(changed, []byte("old"), 0o600)
	os.WriteFile(spaced, []byte("x"), 0o600)
	got, err := Differing(context.Background(), local{}, "m", map[string][]byte{
		same: []byte("one"), changed: []byte("new"), missing: []byte("m"), spaced: []byte("x"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[changed] || !got[missing] {
		t.Errorf("got %v, want only %s and %s", got, changed, missing)
	}
}

// The state is typed: the CLI asks Running and prints Lower instead of
// comparing and lowering strings.
func TestState(t *testing.T) {
	for _, tc := range []struct {
		m       Machine
		running bool
		lower   string
	}{
		{Machine{State: Running}, true, "running"},
		{Machine{State: Stopped}, false, "stopped"},
		{Machine{State: DelayedShutdown}, false, "delayed shutdown"},
		{Machine{}, false, ""},
	} {
		if tc.m.Running() != tc.running || tc.m.State.Lower() != tc.lower {
			t.Errorf("%q: Running %v Lower %q", tc.m.State, tc.m.Running(), tc.m.State.Lower())
		}
	}
}
