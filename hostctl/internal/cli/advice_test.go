package cli

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/reason"
)

// The advice reads as it did when the packages below wrote it: after the
// reason's own message, inside whatever wraps it.
func TestAdviceReadsAsBefore(t *testing.T) {
	stopped := reason.Wrap(errors.New("VM vm1 is stopped"), reason.VMStoppedRenew, "vm1")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{stopped, "VM vm1 is stopped: start it (hostctl vm start vm1), then renew"},
		{fmt.Errorf("vm1: %w", stopped), "vm1: VM vm1 is stopped: start it (hostctl vm start vm1), then renew"},
		{errors.Join(fmt.Errorf("vm1: %w", stopped), errors.New("vm2: other")),
			"vm1: VM vm1 is stopped: start it (hostctl vm start vm1), then renew\nvm2: other"},
		{errors.New("no reason"), "no reason"},
		// Two VMs' errors alike: each gets its advice once.
		{errors.Join(stopped, stopped), "VM vm1 is stopped: start it (hostctl vm start vm1), then renew\nVM vm1 is stopped: start it (hostctl vm start vm1), then renew"},
		// A reason inside a reason: each advice after its own message.
		{reason.Wrap(fmt.Errorf("did not come back (%w)", stopped), reason.NotBackOnRevision, "vm1", "default"),
			"did not come back (VM vm1 is stopped: start it (hostctl vm start vm1), then renew): roll it back with hostctl vm upgrade vm1 --revision default"},
	} {
		if got := adviseError(tc.err).Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if got := advise("", reason.Because(reason.VMStopped, "vm1")); got != "run hostctl vm start vm1 (or hostctl up)" {
		t.Errorf("status of a stopped VM: got %q", got)
	}
	if got := advise("restart the sidecar", reason.Because(reason.CaptureRestart, "vm1")); got != "restart the sidecar (hostctl vm onboard vm1 --restart)" {
		t.Errorf("capture fix: got %q", got)
	}
	if got := advise("no WorkloadEntry: the sidecar has not reached istiod", reason.Because(reason.NoEntry, "vm1")); got != "no WorkloadEntry: the sidecar has not reached istiod; see hostctl vm logs vm1" {
		t.Errorf("status without an entry: got %q", got)
	}
	if got := advise("WorkloadEntry not Healthy (refused)", reason.Because(reason.OwnAppUnhealthy, "own", "8000")); got != "WorkloadEntry not Healthy (refused): hostctl runs no app on own (app: false), so Healthy waits on yours: start it on port 8000" {
		t.Errorf("own app: got %q", got)
	}
}

// Every advice takes its arguments by index, so that each formats with
// the arguments its reason is given and no more: a missing one would
// print %!s(MISSING).
func TestAdviceTakesItsArguments(t *testing.T) {
	verb := regexp.MustCompile(`%(\[\d\])?.`)
	for r, a := range advices {
		for _, v := range verb.FindAllString(a.text, -1) {
			if !regexp.MustCompile(`^%\[[12]\]s$`).MatchString(v) {
				t.Errorf("%s: %q takes an argument by position (%s), not by index", r, a.text, v)
			}
		}
		if got := advise("x", reason.Because(r, "vm1", "8000")); strings.Contains(got, "%!") || a.text == "" {
			t.Errorf("%s: got %q", r, got)
		}
	}
}

// The progress channel renders as the lines always read: a step's event
// with its position, VM and elapsed time, a line of no step after the
// command's prefix, and the advice on a cause after the message.
func TestProgressLines(t *testing.T) {
	var b strings.Builder
	p := newLines(&b, "up: ", progress.ControlPlane, progress.Onboard).Reporter()
	p.Step(progress.ControlPlane, "", "istiod %s", "ready")
	p.Report(progress.Event{Step: progress.Onboard, VM: "vm1", Message: "stays on revision canary (the VMs join default)", Cause: reason.Because(reason.RevisionKept, "vm1", "default")})
	p.Say("%d VM(s) onboarded and Healthy in %s.", 1, "3s")
	want := regexp.MustCompile(`^\[1/2\] control plane: istiod ready \(\d+(\.\d)?m?s\)
\[2/2\] onboard vm1: stays on revision canary \(the VMs join default\): hostctl vm upgrade vm1 --revision default moves it \(\d+(\.\d)?m?s\)
up: 1 VM\(s\) onboarded and Healthy in 3s\.
$`)
	if !want.MatchString(b.String()) {
		t.Errorf("got:\n%s", b.String())
	}
}
