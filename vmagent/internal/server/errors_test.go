package server

import (
	"context"
	"fmt"
	"io/fs"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/probe"
	"github.com/meshvm/meshvm/vmagent/internal/sidecar"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

// Each package sentinel the handlers return reaches hostctl as its code,
// not Unknown: a missing unit, a failed systemd job, a busy delivery.
func TestSentinelsLeaveWithTheirCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{sidecar.ErrNoSystemd, codes.FailedPrecondition},
		{sidecar.ErrUnitNotFound, codes.NotFound},
		{sidecar.ErrJobFailed, codes.FailedPrecondition},
		{vmfiles.ErrBusy, codes.Aborted},
		{vmfiles.ErrUnsafeTarget, codes.PermissionDenied},
		{vmfiles.ErrNoDirectory, codes.FailedPrecondition},
		{probe.ErrNotLocal, codes.InvalidArgument},
		{probe.ErrBadPort, codes.InvalidArgument},
		{probe.ErrNotService, codes.InvalidArgument},
		{fsroot.ErrUnsafePath, codes.InvalidArgument},
		{fsroot.ErrSizeMismatch, codes.InvalidArgument},
		{fsroot.ErrDigestMismatch, codes.InvalidArgument},
		{fsroot.ErrUntrusted, codes.FailedPrecondition},
		{fsroot.ErrTooLarge, codes.FailedPrecondition},
		{fs.ErrNotExist, codes.NotFound},
		{fs.ErrPermission, codes.PermissionDenied},
		// An explicit class wins over the sentinel it wraps.
		{agenterr.Invalid("bad name: %w", fs.ErrNotExist), codes.InvalidArgument},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
	} {
		err := fmt.Errorf("start istio.service: %w", tc.err)
		wire := agenterr.ToGRPC(classify(err))
		if got := status.Code(wire); got != tc.want {
			t.Errorf("%v: sent as %v, want %v", tc.err, got, tc.want)
		}
		if status.Convert(wire).Message() != err.Error() {
			t.Errorf("%v: message %q, want %q", tc.err, status.Convert(wire).Message(), err)
		}
	}
	if len(classOf) != 16 {
		t.Errorf("classOf has %d sentinels, the test %d: add the new one above", len(classOf), 16)
	}
}
