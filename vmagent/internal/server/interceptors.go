package server

import (
	"context"
	"crypto/tls"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/mtls"
	"github.com/meshvm/meshvm/vmagent/config"
)

// The TLS handshake already refuses callers without a certificate from the
// pinned CA; authenticate checks again before any handler runs, so a
// misconfigured listener can never serve an anonymous caller.
func authenticate(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", agenterr.Denied("no peer information: refusing the call")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return "", agenterr.Denied("caller did not use TLS: refusing the call")
	}
	id, err := mtls.PeerIdentity(info.State)
	if err != nil {
		return "", agenterr.Denied("caller not authenticated: %w", err)
	}
	return id, nil
}

// flowWindow lets a file stream keep the pipe full on fast links; gRPC's
// 64 KiB default stalls 1 MiB chunks. It is also what one stream can make
// the agent buffer, so it counts in Limits' memory budget.
const flowWindow = 4 << 20

// Options returns the server options every agent server uses: TLS with the
// given config, authentication and error mapping, flow-control windows,
// and the limits on streams, messages, stalled deliveries and idle
// connections.
func Options(log *slog.Logger, tlsCfg *tls.Config, limits config.Limits) []grpc.ServerOption {
	t := newTrimmer()
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.ChainUnaryInterceptor(t.unary, UnaryInterceptor(log)),
		// Authentication first: an anonymous stream never takes a delivery slot.
		grpc.ChainStreamInterceptor(t.stream, StreamInterceptor(log), newDeliveryLimiter(limits).stream),
		grpc.InitialWindowSize(flowWindow),
		grpc.InitialConnWindowSize(flowWindow),
		grpc.MaxConcurrentStreams(limits.StreamsPerConnection),
		grpc.MaxRecvMsgSize(maxMessage),
		// Callers ping to notice connections the sidecar's capture rules cut;
		// more often than KeepaliveMinTime closes the connection.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: agentspec.KeepaliveMinTime, PermitWithoutStream: true}),
		// The agent pings quiet callers too, so a vanished one releases its
		// streams within 40 s, and closes connections idle for ConnectionIdle.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: time.Duration(limits.ConnectionIdleTimeout), Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}
}

// UnaryInterceptor authenticates, logs and maps errors to gRPC codes.
func UnaryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id, err := authenticate(ctx)
		if err != nil {
			log.Warn("refused call", "method", info.FullMethod, "err", err)
			return nil, agenterr.ToGRPC(err)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		log.Debug("call", "method", info.FullMethod, "caller", id, "took", time.Since(start), "err", err)
		return resp, agenterr.ToGRPC(classify(err))
	}
}

// StreamInterceptor is UnaryInterceptor for streaming calls.
func StreamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		id, err := authenticate(ss.Context())
		if err != nil {
			log.Warn("refused call", "method", info.FullMethod, "err", err)
			return agenterr.ToGRPC(err)
		}
		start := time.Now()
		err = handler(srv, ss)
		log.Debug("call", "method", info.FullMethod, "caller", id, "took", time.Since(start), "err", err)
		return agenterr.ToGRPC(classify(err))
	}
}
