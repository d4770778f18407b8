package reason

import (
	"errors"
	"fmt"
	"testing"
)

func bracket(msg string, c Cause) string { return fmt.Sprintf("%s [%s %v]", msg, c.Reason, c.Args) }

// Each reason's words go right after its own message, wherever the
// wrapping put it, once per error even when two read alike.
func TestFormatPutsTheWordsAfterEachReason(t *testing.T) {
	stopped := Wrap(errors.New("VM vm1 is stopped"), VMNotRunning, "vm1")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{stopped, "VM vm1 is stopped [VMNotRunning [vm1]]"},
		{fmt.Errorf("vm1: %w (after 3s)", stopped), "vm1: VM vm1 is stopped [VMNotRunning [vm1]] (after 3s)"},
		{errors.Join(stopped, errors.New("other"), stopped), "VM vm1 is stopped [VMNotRunning [vm1]]\nother\nVM vm1 is stopped [VMNotRunning [vm1]]"},
		{Wrap(fmt.Errorf("did not come back (%w)", stopped), NotBackOnRevision, "vm1", "canary"),
			"did not come back (VM vm1 is stopped [VMNotRunning [vm1]]) [NotBackOnRevision [vm1 canary]]"},
		{Wrap(stopped, NotBackOnline, "vm1"), "VM vm1 is stopped [VMNotRunning [vm1]] [NotBackOnline [vm1]]"},
		{errors.New("plain"), "plain"},
	} {
		if got := Format(tc.err, bracket); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if Wrap(nil, VMNotRunning) != nil {
		t.Error("Wrap(nil) is not nil")
	}
	if r, ok := Of(fmt.Errorf("x: %w", stopped)); !ok || r.Reason != VMNotRunning || stopped.Error() != "VM vm1 is stopped" {
		t.Errorf("Of: got %v %v", r, ok)
	}
}
