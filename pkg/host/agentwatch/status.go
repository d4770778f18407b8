package agentwatch

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// fromStatus is what an older agent's GetStatus says of what Watch
// streams: its sidecar and credentials (it cannot tell addresses or run an
// app probe on its own).
func fromStatus(st *agentv1.GetStatusResponse) *agentv1.WatchResponse {
	return &agentv1.WatchResponse{
		ObservedAt:          timestamppb.Now(),
		Sidecar:             st.GetSidecar(),
		WorkloadCertificate: st.GetWorkloadCertificate(),
		Token:               st.GetToken(),
		AgentVersion:        st.GetVersion(),
		AgentStartedAt:      st.GetStartedAt(),
	}
}

func changed(a, b *agentv1.WatchResponse) bool {
	return !proto.Equal(a.GetSidecar(), b.GetSidecar()) || !proto.Equal(a.GetWorkloadCertificate(), b.GetWorkloadCertificate()) ||
		!proto.Equal(a.GetToken(), b.GetToken()) || a.GetAgentStartedAt().AsTime() != b.GetAgentStartedAt().AsTime()
}
