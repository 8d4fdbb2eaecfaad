"""The graph side: the projector interface and its Neo4j implementation."""
