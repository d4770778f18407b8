package main

// SDS as Envoy does it for a sidecar: every TLS context in the clusters and
// listeners istiod sends names its secrets ("default", the workload
// certificate; "ROOTCA", the trust bundle) on pilot-agent's SDS socket (the
// bootstrap's sds-grpc cluster). Envoy subscribes to each on its own stream,
// takes every push (pilot-agent pushes a renewed certificate at half-life),
// and when a stream fails, as it does when pilot-agent cannot get a
// certificate from istiod (security/pkg/nodeagent/sds/sdsservice.go relies
// on the client to retry), it opens it again with jittered exponential
// backoff from 500 ms to 30 s. Listeners wait for their secrets: the server
// is not LIVE until each has arrived once.

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// Envoy's retry backoff for a failed xDS stream.
const (
	backoffBase = 500 * time.Millisecond
	backoffMax  = 30 * time.Second
)

// secretRefs returns the secrets the resources' TLS contexts fetch over SDS,
// by name, with the static cluster each is served from.
func secretRefs(resources []*anypb.Any) map[string]string {
	refs := map[string]string{}
	var sockets []*core.TransportSocket
	for _, r := range resources {
		switch r.GetTypeUrl() {
		case clusterType:
			c := &clusterv3.Cluster{}
			if r.UnmarshalTo(c) != nil {
				continue
			}
			sockets = append(sockets, c.GetTransportSocket())
			for _, m := range c.GetTransportSocketMatches() {
				sockets = append(sockets, m.GetTransportSocket())
			}
		case listenerType:
			l := &listenerv3.Listener{}
			if r.UnmarshalTo(l) != nil {
				continue
			}
			for _, fc := range append(l.GetFilterChains(), l.GetDefaultFilterChain()) {
				sockets = append(sockets, fc.GetTransportSocket())
			}
		}
	}
	for _, ts := range sockets {
		cfg := ts.GetTypedConfig()
		if cfg == nil {
			continue
		}
		var common *tlsv3.CommonTlsContext
		up, down := &tlsv3.UpstreamTlsContext{}, &tlsv3.DownstreamTlsContext{}
		switch {
		case cfg.MessageIs(up) && cfg.UnmarshalTo(up) == nil:
			common = up.GetCommonTlsContext()
		case cfg.MessageIs(down) && cfg.UnmarshalTo(down) == nil:
			common = down.GetCommonTlsContext()
		default:
			continue
		}
		configs := append([]*tlsv3.SdsSecretConfig{common.GetValidationContextSdsSecretConfig(),
			common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig()}, common.GetTlsCertificateSdsSecretConfigs()...)
		for _, sc := range configs {
			services := sc.GetSdsConfig().GetApiConfigSource().GetGrpcServices()
			if sc.GetName() == "" || len(services) == 0 {
				continue
			}
			refs[sc.GetName()] = services[0].GetEnvoyGrpc().GetClusterName()
		}
	}
	return refs
}

// sds keeps one subscription per referenced secret.
type sds struct {
	ctx      context.Context
	node     *core.Node
	clusters map[string]cluster
	st       *stats

	// arrived is called after a secret arrives (listeners may be waiting).
	arrived func()

	mu       sync.Mutex
	subs     map[string]context.CancelFunc
	received map[string]bool
	byType   map[string]map[string]string // refs found in the last CDS and LDS
}

func newSDS(ctx context.Context, node *core.Node, clusters map[string]cluster, st *stats, arrived func()) *sds {
	return &sds{ctx: ctx, node: node, clusters: clusters, st: st, arrived: arrived,
		subs: map[string]context.CancelFunc{}, received: map[string]bool{}, byType: map[string]map[string]string{}}
}

// update takes the secrets a state-of-the-world response of typeURL
// references: new ones are subscribed to, ones no longer referenced dropped.
func (s *sds) update(typeURL string, resources []*anypb.Any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byType[typeURL] = secretRefs(resources)
	want := map[string]string{}
	for _, refs := range s.byType {
		for name, c := range refs {
			want[name] = c
		}
	}
	for name, cancel := range s.subs {
		if _, ok := want[name]; !ok {
			cancel()
			delete(s.subs, name)
			delete(s.received, name)
		}
	}
	for name, clusterName := range want {
		if _, ok := s.subs[name]; ok {
			continue
		}
		c, ok := s.clusters[clusterName]
		if !ok {
			log.Printf("SDS %s: cluster %q is not a static cluster of the bootstrap", name, clusterName)
			continue
		}
		a, err := c.address()
		if err != nil {
			log.Printf("SDS %s: %v", name, err)
			continue
		}
		network, addr, err := a.dial()
		if err != nil {
			log.Printf("SDS %s: %v", name, err)
			continue
		}
		ctx, cancel := context.WithCancel(s.ctx)
		s.subs[name] = cancel
		go s.subscribe(ctx, name, network, addr)
	}
}

// ready reports whether every referenced secret has arrived once.
func (s *sds) ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.subs {
		if !s.received[name] {
			return false
		}
	}
	return true
}

// names lists the subscribed secrets, for the log.
func (s *sds) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.subs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// subscribe keeps a stream for name open, retrying as Envoy does.
func (s *sds) subscribe(ctx context.Context, name, network, addr string) {
	ceiling := backoffBase
	for ctx.Err() == nil {
		got, err := s.stream(ctx, name, network, addr)
		if ctx.Err() != nil {
			return
		}
		s.st.add("sds."+name+".update_failure", 1)
		if got {
			ceiling = backoffBase
		}
		delay := time.Duration(rand.Int64N(int64(ceiling)))
		log.Printf("SDS %s: stream ended (%v); retrying in %s", name, err, delay.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		ceiling = min(2*ceiling, backoffMax)
	}
}

// stream runs one SDS stream for name, ACKing every secret it can read and
// NACKing one it cannot; got says whether any secret arrived.
func (s *sds) stream(ctx context.Context, name, network, addr string) (got bool, err error) {
	conn, err := grpcConn(network, addr)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return false, err
	}
	req := &discovery.DiscoveryRequest{Node: s.node, TypeUrl: secretType, ResourceNames: []string{name}}
	if err := stream.Send(req); err != nil {
		return false, err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return got, err
		}
		ack := &discovery.DiscoveryRequest{Node: s.node, TypeUrl: secretType, ResourceNames: []string{name},
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		what, err := describeSecret(name, resp.GetResources())
		if err != nil {
			// A NACK keeps the previous version, as Envoy does.
			ack.VersionInfo = req.GetVersionInfo()
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			s.st.add("sds."+name+".update_rejected", 1)
			log.Printf("SDS %s: NACK version %s: %v", name, resp.GetVersionInfo(), err)
		} else {
			got = true
			req = ack
			s.st.add("sds."+name+".update_success", 1)
			s.mu.Lock()
			s.received[name] = true
			s.mu.Unlock()
			log.Printf("SDS %s: ACK version %s: %s", name, resp.GetVersionInfo(), what)
			s.arrived()
		}
		if err := stream.Send(ack); err != nil {
			return got, err
		}
	}
}

// describeSecret checks that the response carries the secret asked for and
// says what it holds: a certificate's validity, or a trust bundle's size.
func describeSecret(name string, resources []*anypb.Any) (string, error) {
	for _, r := range resources {
		sec := &tlsv3.Secret{}
		if err := r.UnmarshalTo(sec); err != nil {
			return "", fmt.Errorf("not a Secret: %w", err)
		}
		if sec.GetName() != name {
			continue
		}
		if tc := sec.GetTlsCertificate(); tc != nil {
			cert, err := leaf(tc.GetCertificateChain().GetInlineBytes())
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("certificate %s valid %s to %s", cert.URIs, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339)), nil
		}
		if vc := sec.GetValidationContext(); vc != nil {
			return fmt.Sprintf("trust bundle of %d bytes", len(vc.GetTrustedCa().GetInlineBytes())), nil
		}
		return "", fmt.Errorf("secret %s holds neither a certificate nor a validation context", name)
	}
	return "", fmt.Errorf("the response lacks secret %s", name)
}

func leaf(chain []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(chain)
	if b == nil {
		return nil, fmt.Errorf("the certificate chain is not PEM")
	}
	return x509.ParseCertificate(b.Bytes)
}
