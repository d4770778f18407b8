package agenterr_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshvm/meshvm/pkg/agenterr"
)

var classes = []error{
	agenterr.NotFound, agenterr.InvalidArgument, agenterr.FailedPrecondition, agenterr.Unavailable,
	agenterr.PermissionDenied, agenterr.Aborted, agenterr.ResourceExhausted, agenterr.Unimplemented,
	context.Canceled, context.DeadlineExceeded,
}

// Every class crosses the wire and back as itself, with its message and
// nothing of the other classes.
func TestEveryClassSurvivesTheRoundTrip(t *testing.T) {
	codesSeen := map[codes.Code]error{}
	for _, cls := range classes {
		sent := fmt.Errorf("start istio.service: %w", cls)
		wire := agenterr.ToGRPC(sent)
		code := status.Code(wire)
		if code == codes.Unknown {
			t.Errorf("%v: sent as Unknown", cls)
		}
		if other, dup := codesSeen[code]; dup {
			t.Errorf("%v and %v share code %v: the way back cannot tell them apart", cls, other, code)
		}
		codesSeen[code] = cls
		got := agenterr.FromGRPC(wire)
		if got.Error() != sent.Error() {
			t.Errorf("%v: message %q, want %q", cls, got, sent)
		}
		if status.Code(got) != code {
			t.Errorf("%v: status.Code after the way back is %v, want %v", cls, status.Code(got), code)
		}
		for _, other := range classes {
			if errors.Is(got, other) != (other == cls) {
				t.Errorf("%v: errors.Is(_, %v) = %v", cls, other, !(other == cls))
			}
		}
	}
}

// An error without a class is Unknown on the wire and comes back with the
// agent's message alone, not gRPC's "rpc error: code = Unknown desc =".
func TestUnclassedErrorKeepsItsMessage(t *testing.T) {
	got := agenterr.FromGRPC(agenterr.ToGRPC(errors.New("disk full")))
	if got.Error() != "disk full" || status.Code(got) != codes.Unknown || agenterr.Class(got) != nil {
		t.Errorf("got %q (%v, class %v)", got, status.Code(got), agenterr.Class(got))
	}
	if agenterr.FromGRPC(nil) != nil || agenterr.ToGRPC(nil) != nil {
		t.Error("nil must stay nil")
	}
	plain := errors.New("not a status")
	if agenterr.FromGRPC(plain) != plain {
		t.Error("a non-status error must come back unchanged")
	}
}

// The constructors keep the cause: its class and its sentinel.
func TestConstructorsKeepTheCause(t *testing.T) {
	cause := fmt.Errorf("open /etc/hosts: %w", fs.ErrNotExist)
	for _, tc := range []struct {
		err error
		cls error
	}{
		{agenterr.Invalid("bad: %w", cause), agenterr.InvalidArgument},
		{agenterr.Precondition("bad: %w", cause), agenterr.FailedPrecondition},
		{agenterr.Missing("bad: %w", cause), agenterr.NotFound},
		{agenterr.Unreachable("bad: %w", cause), agenterr.Unavailable},
		{agenterr.Denied("bad: %w", cause), agenterr.PermissionDenied},
	} {
		if !errors.Is(tc.err, tc.cls) || !errors.Is(tc.err, fs.ErrNotExist) || tc.err.Error() != "bad: "+cause.Error() {
			t.Errorf("%v: lost its class %v or its cause", tc.err, tc.cls)
		}
		if agenterr.Class(tc.err) != tc.cls {
			t.Errorf("%v: Class = %v, want %v", tc.err, agenterr.Class(tc.err), tc.cls)
		}
	}
}

// Classify adds a class only where there is none.
func TestClassify(t *testing.T) {
	err := agenterr.Classify(fs.ErrNotExist, agenterr.NotFound)
	if !errors.Is(err, agenterr.NotFound) || !errors.Is(err, fs.ErrNotExist) || err.Error() != fs.ErrNotExist.Error() {
		t.Errorf("got %v", err)
	}
	already := agenterr.Invalid("bad")
	if agenterr.Classify(already, agenterr.NotFound) != already {
		t.Error("Classify replaced an existing class")
	}
	if agenterr.Classify(nil, agenterr.NotFound) != nil {
		t.Error("Classify(nil) is not nil")
	}
}
