package capture

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

// fakeValidator stands in for pilot-agent at an unreachable boundary (no
// pilot-agent on the unit-test machine): it prints who runs it, its
// arguments and environment, and exits as told. The real validator runs in
// the lab test.
func fakeValidator(t *testing.T, exit int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a program as uid 1337")
	}
	dir, err := os.MkdirTemp("", "capture-validate-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	p := filepath.Join(dir, "pilot-agent")
	script := "#!/bin/sh\necho \"uid=$(id -u) gid=$(id -g) groups=$(id -G) args=$*\"\nenv | sort >&2\nexit " + string(rune('0'+exit)) + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidateRunsAsProxyWithCleanEnv(t *testing.T) {
	t.Setenv("LD_PRELOAD", "/tmp/evil.so")
	t.Setenv("SECRET", "root's")
	p := fakeValidator(t, 0)
	v := Validate(context.Background(), p, 1337, 1337, map[string]string{"ENVOY_PORT": "15001", "PATH": "/tmp/evil", "ISTIO_META_X": "y"})
	if !v.Passed {
		t.Fatalf("got failed validation %q, want passed", v.Output)
	}
	for _, want := range []string{"uid=1337 gid=1337 groups=1337 args=istio-iptables --skip-rule-apply --run-validation", "ENVOY_PORT=15001", "LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"} {
		if !strings.Contains(v.Output, want) {
			t.Errorf("got output %q, want it to contain %q", v.Output, want)
		}
	}
	for _, bad := range []string{"LD_PRELOAD", "SECRET", "/tmp/evil", "ISTIO_META_X"} {
		if strings.Contains(v.Output, bad) {
			t.Errorf("got output %q: %s reached the validator", v.Output, bad)
		}
	}
}

func TestValidateFailureIsRecorded(t *testing.T) {
	p := fakeValidator(t, 7)
	v := Validate(context.Background(), p, 1337, 1337, nil)
	if v.Passed || !strings.Contains(v.Output, "exit status 7") {
		t.Errorf("got %+v, want a failed validation naming exit status 7", v)
	}
	root, err := fsroot.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := Load(root); ok || err != nil {
		t.Fatalf("got ok=%v err=%v before any record, want none", ok, err)
	}
	if err := Save(root, v); err != nil {
		t.Fatal(err)
	}
	got, ok, err := Load(root)
	if err != nil || !ok || got.Passed || got.Output != v.Output {
		t.Fatalf("got %+v ok=%v err=%v, want the saved record back", got, ok, err)
	}
	verdict := Verdict{State: OK}
	verdict.WithValidation(got, ok, true)
	if c, bad := verdict.Problem(); verdict.State != Fail || !bad || c.Fix == "" {
		t.Errorf("got %+v, want a failed verdict with a fix", verdict)
	}
	if err := Forget(root); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := Load(root); ok {
		t.Error("got a record after Forget")
	}
}

func TestRunBoundedLimits(t *testing.T) {
	start := time.Now()
	_, _, err := runBounded(context.Background(), 300*time.Millisecond, nil, "/bin/sleep", "10")
	if err == nil || !strings.Contains(err.Error(), "did not finish") || time.Since(start) > 5*time.Second {
		t.Errorf("got %v after %s, want a timeout within seconds", err, time.Since(start))
	}
	start = time.Now()
	out, _, err := runBounded(context.Background(), 10*time.Second, nil, "/usr/bin/yes")
	if err == nil || !strings.Contains(err.Error(), "more than") || len(out) > maxToolOut || time.Since(start) > 5*time.Second {
		t.Errorf("got %v with %d bytes after %s, want the output capped at %d and the program ended at once", err, len(out), time.Since(start), maxToolOut)
	}
}
