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
)

// The TLS handshake already refuses callers without a certificate from the
// pinned CA; authenticate checks again before any handler runs, so a
// misconfigured listener can never serve an anonymous caller.
func authenticate(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", agenterr.Denied("no peer information: refusing the call")
	}
	state, ok := tlsState(p.AuthInfo)
	if !ok {
		return "", agenterr.Denied("caller did not use TLS: refusing the call")
	}
	id, err := mtls.PeerIdentity(state)
	if err != nil {
		return "", agenterr.Denied("caller not authenticated: %w", err)
	}
	return id, nil
}

// flowWindow lets a file stream keep the pipe full; gRPC's 64 KiB default
// stalls 1 MiB chunks. It is also what one stream can make the agent
// buffer besides the message being read, so with maxMessage it sets what
// max_streams costs: 32 streams x 3 MiB.
const flowWindow = 1 << 20

// connWindow is the connection's window: gRPC returns it as data arrives,
// whatever the handlers read, so it bounds nothing and only keeps one slow
// stream from stalling the others.
const connWindow = 4 << 20

// maxHeaderList bounds one request's metadata; hostctl sends a few hundred
// bytes, and gRPC's default (16 MiB) let a stalled header block hold that much.
const maxHeaderList = 16 << 10

// Options returns the server options every agent server uses: TLS with the
// given config through the guard, authentication and error mapping,
// flow-control windows, and the limits on connections, streams, messages,
// stalled requests and deliveries, and idle connections. Serve on
// g.Listener(l).
func (g *Guard) Options(tlsCfg *tls.Config) []grpc.ServerOption {
	t := newTrimmer()
	limits := g.limits
	return []grpc.ServerOption{
		grpc.Creds(g.Credentials(credentials.NewTLS(tlsCfg))),
		grpc.ConnectionTimeout(time.Duration(limits.HandshakeTimeout)),
		grpc.InTapHandle(g.tap),
		grpc.ChainUnaryInterceptor(t.unary, UnaryInterceptor(g.log)),
		// Authentication first: an anonymous stream never reaches a handler.
		grpc.ChainStreamInterceptor(t.stream, StreamInterceptor(g.log), newDeliveryLimiter(limits).stream),
		grpc.InitialWindowSize(flowWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.MaxConcurrentStreams(limits.StreamsPerConnection),
		grpc.MaxRecvMsgSize(maxMessage),
		grpc.MaxHeaderListSize(maxHeaderList),
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
		requestReceived(ctx) // a unary handler runs once its request is in
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
		err = handler(srv, receivedStream{ss})
		log.Debug("call", "method", info.FullMethod, "caller", id, "took", time.Since(start), "err", err)
		return agenterr.ToGRPC(classify(err))
	}
}
