// Package agenterr holds the error classes shared by vmagent and its callers,
// and their one translation to and from gRPC status codes.
package agenterr

//lint:file-ignore ST1012 the error variables here are classes, named as gRPC's codes and containerd's errdefs name theirs (agenterr.NotFound, read with errors.Is), not single errors: ErrNotFound would stutter at every caller

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error classes. Wrap them with fmt.Errorf("...: %w", agenterr.InvalidArgument)
// or use the helpers below; callers test with errors.Is.
var (
	NotFound           = errors.New("not found")
	InvalidArgument    = errors.New("invalid argument")
	FailedPrecondition = errors.New("failed precondition")
	Unavailable        = errors.New("unavailable")
	PermissionDenied   = errors.New("permission denied")
	// Aborted is a change that lost a race with another (retry it).
	Aborted = errors.New("aborted")
	// ResourceExhausted is a limit reached (retry later).
	ResourceExhausted = errors.New("resource exhausted")
	// Unimplemented is a call the agent does not know: it is older than hostctl.
	Unimplemented = errors.New("unimplemented")
)

// classed is an error of a class that keeps its cause: errors.Is finds both
// the class and every error the message wrapped with %w.
type classed struct {
	class error
	err   error
}

func (e *classed) Error() string { return e.err.Error() }

func (e *classed) Is(target error) bool { return target == e.class }

func (e *classed) Unwrap() error { return e.err }

func newf(class error, format string, args ...any) error {
	return &classed{class: class, err: fmt.Errorf(format, args...)}
}

// Invalid returns an InvalidArgument error; wrap its cause with %w.
func Invalid(format string, args ...any) error { return newf(InvalidArgument, format, args...) }

// Precondition returns a FailedPrecondition error; wrap its cause with %w.
func Precondition(format string, args ...any) error {
	return newf(FailedPrecondition, format, args...)
}

// Missing returns a NotFound error; wrap its cause with %w.
func Missing(format string, args ...any) error { return newf(NotFound, format, args...) }

// Unreachable returns an Unavailable error; wrap its cause with %w.
func Unreachable(format string, args ...any) error { return newf(Unavailable, format, args...) }

// Denied returns a PermissionDenied error; wrap its cause with %w.
func Denied(format string, args ...any) error { return newf(PermissionDenied, format, args...) }

// Classify gives err the class cls unless it already has one, keeping its
// message and chain: the server's one place to class its packages' errors.
func Classify(err, cls error) error {
	if err == nil || Class(err) != nil {
		return err
	}
	return &classed{class: cls, err: err}
}

// Class is err's class, nil when it has none.
func Class(err error) error {
	for _, m := range classes {
		if errors.Is(err, m.class) {
			return m.class
		}
	}
	return nil
}

// classes pairs every class with its code, one to one, so a class survives
// the round trip over the wire.
var classes = []struct {
	class error
	code  codes.Code
}{
	{NotFound, codes.NotFound},
	{InvalidArgument, codes.InvalidArgument},
	{FailedPrecondition, codes.FailedPrecondition},
	{Unavailable, codes.Unavailable},
	{PermissionDenied, codes.PermissionDenied},
	{Aborted, codes.Aborted},
	{ResourceExhausted, codes.ResourceExhausted},
	{Unimplemented, codes.Unimplemented},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// ToGRPC converts an error into a gRPC status error, keeping its message.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, m := range classes {
		if errors.Is(err, m.class) {
			return status.Error(m.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}

// FromGRPC converts a gRPC status error back into an error of the matching
// class, so callers can use errors.Is on both sides of the wire. Its message
// is the agent's, without gRPC's "rpc error: code = ..." prefix; the status
// error stays in the chain for status.Code.
func FromGRPC(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, m := range classes {
		if st.Code() == m.code {
			return &classed{class: m.class, err: &remote{msg: st.Message(), status: err}}
		}
	}
	return &remote{msg: st.Message(), status: err}
}

// remote is an error as the agent sent it: its message, without the
// "rpc error: code = ... desc =" prefix, over the status error.
type remote struct {
	msg    string
	status error
}

func (e *remote) Error() string { return e.msg }

func (e *remote) Unwrap() error { return e.status }
