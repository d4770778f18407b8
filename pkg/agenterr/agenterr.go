// Package agenterr holds the error classes shared by vmagent and its callers,
// and their one translation to and from gRPC status codes.
package agenterr

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
)

type classed struct {
	class error
	msg   string
	cause error
}

func (e *classed) Error() string { return e.msg }

func (e *classed) Is(target error) bool { return target == e.class }

func (e *classed) Unwrap() error { return e.cause }

func newf(class error, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &classed{class: class, msg: err.Error(), cause: errors.Unwrap(err)}
}

// Invalid returns an InvalidArgument error with the given message.
func Invalid(format string, args ...any) error { return newf(InvalidArgument, format, args...) }

// Precondition returns a FailedPrecondition error with the given message.
func Precondition(format string, args ...any) error {
	return newf(FailedPrecondition, format, args...)
}

// Missing returns a NotFound error with the given message.
func Missing(format string, args ...any) error { return newf(NotFound, format, args...) }

// Unreachable returns an Unavailable error with the given message.
func Unreachable(format string, args ...any) error { return newf(Unavailable, format, args...) }

// Denied returns a PermissionDenied error with the given message.
func Denied(format string, args ...any) error { return newf(PermissionDenied, format, args...) }

var toCode = []struct {
	class error
	code  codes.Code
}{
	{NotFound, codes.NotFound},
	{InvalidArgument, codes.InvalidArgument},
	{FailedPrecondition, codes.FailedPrecondition},
	{Unavailable, codes.Unavailable},
	{PermissionDenied, codes.PermissionDenied},
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
	for _, m := range toCode {
		if errors.Is(err, m.class) {
			return status.Error(m.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}

// FromGRPC converts a gRPC status error back into an error of the matching
// class, so callers can use errors.Is on both sides of the wire.
func FromGRPC(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, m := range toCode {
		if st.Code() == m.code {
			return &classed{class: m.class, msg: st.Message(), cause: err}
		}
	}
	return err
}
