package sidecarenv

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/capture"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
)

// Rules an earlier run left in a second backend get a cleanup forced to
// that backend before the install, and Istio's validation runs after the
// install as the proxy's ids and is recorded for the status.
func TestPrepareCleansBothBackendsAndRecordsValidation(t *testing.T) {
	dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\nENVOY_PORT='15001'\n")
	root, _ := fsroot.New(dir)
	var calls []string
	reads := 0
	var validated []int
	p := &Preparer{
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Root: root, Users: sysusers.New(root),
		Run: func(_ context.Context, env []string, name string, args ...string) error {
			force := ""
			for _, e := range env {
				if strings.HasPrefix(e, "FORCE_IPTABLES_BINARY=") {
					force = " (" + e + ")"
				}
			}
			calls = append(calls, strings.Join(append([]string{filepath.Base(name)}, args...), " ")+force)
			return nil
		},
		// After Istio's own cleanup, iptables-nft still holds its chains.
		ReadRules: func(context.Context) capture.Saves {
			reads++
			return capture.Saves{Out: map[string][]byte{
				"iptables-legacy-save": []byte("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
				"iptables-nft-save":    []byte("*nat\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"),
			}}
		},
		Validate: func(_ context.Context, uid, gid int, env map[string]string) capture.Validation {
			validated = append(validated, uid, gid)
			if env["ENVOY_PORT"] != "15001" {
				t.Errorf("validator env lacks ENVOY_PORT: %v", env)
			}
			return capture.Validation{At: time.Unix(1, 0).UTC(), Passed: true, Output: "Validation passed, iptables rules established"}
		},
	}
	// A record of an earlier start is dropped even if this one fails before validating.
	capture.Save(root, capture.Validation{Passed: true, Output: "stale"})
	if err := p.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"pilot-agent istio-iptables --cleanup-only", "pilot-agent istio-iptables --cleanup-only (FORCE_IPTABLES_BINARY=nft)", "pilot-agent istio-iptables"}
	if !slices.Equal(calls, want) {
		t.Errorf("got commands %q, want %q", calls, want)
	}
	if !slices.Equal(validated, []int{1337, 1338}) {
		t.Errorf("got the validator run as %v, want uid 1337 gid 1338", validated)
	}
	rec, ok, err := capture.Load(root)
	if err != nil || !ok || !rec.Passed || rec.Output != "Validation passed, iptables rules established" {
		t.Fatalf("got record %+v ok=%v err=%v, want this start's validation", rec, ok, err)
	}
	if st, err := os.Stat(filepath.Join(dir, capture.ValidationPath)); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("got record %v, %v, want a 0644 root file", st, err)
	}

	// The stop removes the record and cleans both backends too.
	calls = nil
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := capture.Load(root); ok {
		t.Error("got a validation record after cleanup, want none")
	}
	want = []string{"pilot-agent istio-iptables --cleanup-only", "pilot-agent istio-iptables --cleanup-only (FORCE_IPTABLES_BINARY=nft)"}
	if !slices.Equal(calls, want) {
		t.Errorf("cleanup: got commands %q, want %q", calls, want)
	}

	// A failing prepare leaves no record of the earlier start.
	capture.Save(root, capture.Validation{Passed: true, Output: "stale"})
	p.Run = func(context.Context, []string, string, ...string) error { return io.ErrUnexpectedEOF }
	if err := p.Prepare(context.Background()); err == nil {
		t.Fatal("got no error from a failing istio-iptables")
	}
	if _, ok, _ := capture.Load(root); ok {
		t.Error("got the earlier start's validation record after a failed prepare, want none")
	}
}
