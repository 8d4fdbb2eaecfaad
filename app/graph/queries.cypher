// Every Cypher statement of the project, by name; loaded by app/graph/neo4j.py.
// All values are parameters; labels and relationship types are constants written here.

// schema //
// Uniqueness constraints and lookup indexes, idempotent; one statement per line.
CREATE CONSTRAINT memory_id IF NOT EXISTS FOR (m:Memory) REQUIRE m.id IS UNIQUE;
CREATE CONSTRAINT entity_key IF NOT EXISTS FOR (e:Entity) REQUIRE e.key IS UNIQUE;
CREATE INDEX memory_user IF NOT EXISTS FOR (m:Memory) ON (m.user_id);
CREATE INDEX entity_user IF NOT EXISTS FOR (e:Entity) ON (e.user_id);
CREATE INDEX related_memory IF NOT EXISTS FOR ()-[r:RELATED]-() ON (r.memory_id)

// project_batch //
// Version-fenced projection of a batch of memories. A row whose version is not newer than the
// node's is skipped, so duplicates and late, out-of-order deliveries change nothing; a delete
// leaves the node as a tombstone (deleted = true) that fences older versions out.
// Returns the applied rows and the entity keys they stopped mentioning.
UNWIND $rows AS row
MERGE (m:Memory {id: row.id})
  ON CREATE SET m.user_id = row.user_id, m.version = 0
WITH m, row
WHERE m.user_id = row.user_id
  AND (m.version < row.version OR (row.force AND m.version = row.version))
SET m.version = row.version, m.deleted = row.deleted, m.importance = row.importance,
    m.content_hash = row.content_hash, m.projected_at = datetime()
WITH m, row
CALL (m) {
  OPTIONAL MATCH (m)-[r:MENTIONS]->(e:Entity)
  DELETE r
  RETURN collect(e.key) AS old_keys
}
CALL (m) {
  OPTIONAL MATCH (:Entity)-[r:RELATED {memory_id: m.id}]->(:Entity)
  DELETE r
}
CALL (m, row) {
  UNWIND row.entities AS ent
  MERGE (e:Entity {key: ent.key})
    ON CREATE SET e.user_id = row.user_id, e.name = ent.name, e.type = ent.type
  MERGE (m)-[:MENTIONS]->(e)
}
CALL (m, row) {
  // Only between entities this memory mentions (two MATCH clauses, so a self-relation can use
  // one MENTIONS twice), and only the user's own: never onto another memory's entities.
  UNWIND row.relations AS rel
  MATCH (m)-[:MENTIONS]->(a:Entity {key: rel.source})
  MATCH (m)-[:MENTIONS]->(b:Entity {key: rel.target})
  WHERE a.user_id = row.user_id AND b.user_id = row.user_id
  CREATE (a)-[:RELATED {predicate: rel.predicate, memory_id: m.id, user_id: row.user_id}]->(b)
}
RETURN m.id AS id, old_keys

// remove_orphan_entities //
// Entities no memory mentions any more (among those a batch stopped mentioning).
// DISTINCT: a key given twice would match the node twice and be counted twice.
UNWIND $keys AS key
WITH DISTINCT key
MATCH (e:Entity {key: key})
WHERE NOT (e)<-[:MENTIONS]-()
DETACH DELETE e
RETURN count(*) AS removed

// memory_snapshot //
// Projected state of a page of memories: version, tombstone flag and the entity keys mentioned.
UNWIND $ids AS id
MATCH (m:Memory {id: id})
OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity)
RETURN m.id AS id, m.user_id AS user_id, m.version AS version,
       coalesce(m.deleted, false) AS deleted, collect(e.key) AS entity_keys

// prune_tombstones //
// Remove tombstones the caller has proved safe (no outbox row outstanding, retention passed).
UNWIND $ids AS id
WITH DISTINCT id
MATCH (m:Memory {id: id})
WHERE m.deleted = true
DETACH DELETE m
RETURN count(*) AS removed

// clear_user //
// Remove one user's whole projection (rebuild).
MATCH (n)
WHERE (n:Memory OR n:Entity) AND n.user_id = $user_id
CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS

// clear_all //
// Remove the whole projection (rebuild of every user).
MATCH (n)
WHERE n:Memory OR n:Entity
CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS

// counts //
// Node and relationship counts for stats.
CALL () { MATCH (m:Memory) WHERE coalesce(m.deleted, false) = false RETURN count(m) AS memories }
CALL () { MATCH (m:Memory) WHERE m.deleted = true RETURN count(m) AS tombstones }
CALL () { MATCH (e:Entity) RETURN count(e) AS entities }
CALL () { MATCH ()-[r:MENTIONS]->() RETURN count(r) AS mentions }
CALL () { MATCH ()-[r:RELATED]->() RETURN count(r) AS relations }
RETURN memories, tombstones, entities, mentions, relations

// memory_page //
// A page of Memory nodes in id order (keyset), optionally of one user.
MATCH (m:Memory)
WHERE m.id > $after AND ($user_id IS NULL OR m.user_id = $user_id)
RETURN m.id AS id, m.user_id AS user_id, m.version AS version,
       coalesce(m.deleted, false) AS deleted
ORDER BY m.id
LIMIT $limit

// orphan_entities //
// Entities no memory mentions.
MATCH (e:Entity)
WHERE ($user_id IS NULL OR e.user_id = $user_id) AND NOT (e)<-[:MENTIONS]-()
RETURN e.key AS key, e.user_id AS user_id
LIMIT $limit

// cross_user_mentions //
// MENTIONS edges that join a memory to another user's entity.
MATCH (m:Memory)-[:MENTIONS]->(e:Entity)
WHERE m.user_id <> e.user_id
  AND ($user_id IS NULL OR m.user_id = $user_id OR e.user_id = $user_id)
RETURN m.id AS memory_id, m.user_id AS user_id, e.key AS entity_key, e.user_id AS other_user
LIMIT $limit

// cross_user_relations //
// RELATED edges between entities of different users (or stamped with another user); the other
// user is the target's owner, or the stamp's when both entities belong to one user.
MATCH (a:Entity)-[r:RELATED]->(b:Entity)
WHERE (a.user_id <> b.user_id OR r.user_id <> a.user_id)
  AND ($user_id IS NULL OR $user_id IN [a.user_id, b.user_id, r.user_id])
RETURN r.memory_id AS memory_id, a.user_id AS user_id, a.key AS source, b.key AS target,
       CASE WHEN b.user_id <> a.user_id THEN b.user_id ELSE r.user_id END AS other_user
LIMIT $limit

// remove_memories //
// Remove Memory nodes Postgres never had, with their edges; returns the entity keys they
// mentioned so orphans can be removed next.
UNWIND $ids AS id
MATCH (m:Memory {id: id})
CALL (m) {
  OPTIONAL MATCH (:Entity)-[r:RELATED {memory_id: m.id}]->(:Entity)
  DELETE r
}
CALL (m) {
  OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity)
  RETURN collect(e.key) AS keys
}
DETACH DELETE m
RETURN keys

// remove_cross_user_edges //
// Remove every edge that joins two users' data.
CALL () {
  MATCH (m:Memory)-[r:MENTIONS]->(e:Entity) WHERE m.user_id <> e.user_id DELETE r
}
CALL () {
  MATCH (a:Entity)-[r:RELATED]->(b:Entity)
  WHERE a.user_id <> b.user_id OR r.user_id <> a.user_id
  DELETE r
}
RETURN 1 AS done

// user_graph //
// One user's live memories with the entities they mention (for people to look at).
MATCH (m:Memory {user_id: $user_id})
WHERE coalesce(m.deleted, false) = false
OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity)
WITH m, e ORDER BY e.type, e.name
RETURN m.id AS id, m.version AS version, collect(e.type + ': ' + e.name) AS entities
ORDER BY id
LIMIT $limit

// related //
// For some memories of one user: version, tombstone flag, and the user's live memories that
// share entities with each (most shared first, then importance, then id), at most $limit each.
UNWIND $ids AS id
MATCH (m:Memory {id: id})
WHERE m.user_id = $user_id
OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity)<-[:MENTIONS]-(o:Memory)
WHERE e.user_id = $user_id AND o.user_id = $user_id AND o.id <> m.id
  AND coalesce(o.deleted, false) = false
WITH m, o, collect(DISTINCT e) AS shared
ORDER BY size(shared) DESC, coalesce(o.importance, 0) DESC, o.id
WITH m, collect(CASE WHEN o IS NULL THEN null ELSE
                {id: o.id, importance: coalesce(o.importance, 0),
                 shared: [s IN shared | {key: s.key, name: s.name, type: s.type}]} END) AS related
RETURN m.id AS id, m.version AS version, coalesce(m.deleted, false) AS deleted,
       related[0..$limit] AS related

// entity_mentions //
// One user's entities that live memories mention, with how many, most mentioned first.
MATCH (e:Entity)
WHERE e.user_id = $user_id AND ($type IS NULL OR e.type = $type)
  AND ($needle IS NULL OR toLower(e.name) CONTAINS toLower($needle))
MATCH (e)<-[:MENTIONS]-(m:Memory)
WHERE m.user_id = $user_id AND coalesce(m.deleted, false) = false
WITH e, count(DISTINCT m) AS mentions
RETURN e.key AS key, e.name AS name, e.type AS type, mentions
ORDER BY mentions DESC, e.name, e.key
LIMIT $limit

// entity_memories //
// One user's live memories that mention an entity of theirs, most important first.
MATCH (e:Entity {key: $key})<-[:MENTIONS]-(m:Memory)
WHERE e.user_id = $user_id AND m.user_id = $user_id AND coalesce(m.deleted, false) = false
RETURN m.id AS id
ORDER BY coalesce(m.importance, 0) DESC, m.id
LIMIT $limit

// entity_neighbourhood //
// The user's entities RELATED to one of theirs (either direction), with each predicate and
// how many memories make the link.
MATCH (e:Entity {key: $key})-[r:RELATED]-(o:Entity)
WHERE e.user_id = $user_id AND o.user_id = $user_id AND r.user_id = $user_id
WITH o, r.predicate AS predicate, count(DISTINCT r.memory_id) AS memories
RETURN o.key AS key, o.name AS name, o.type AS type, predicate, memories
ORDER BY memories DESC, key, predicate
LIMIT $limit

// memory_neighbourhood //
// One user's live memory: the entities it mentions, the user's entities one RELATED hop away
// (at most $limit, by key) and the distinct RELATED edges among them that touch a mentioned one.
// Every node and edge is the user's own: a crossing edge is never followed.
MATCH (m:Memory {id: $memory_id})
WHERE m.user_id = $user_id AND coalesce(m.deleted, false) = false
CALL (m) {
  OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity)
  WHERE e.user_id = $user_id
  RETURN collect(DISTINCT e) AS mentioned
}
CALL (mentioned) {
  UNWIND mentioned AS e
  MATCH (e)-[r:RELATED]-(n:Entity)
  WHERE r.user_id = $user_id AND n.user_id = $user_id AND NOT n IN mentioned
  WITH DISTINCT n
  ORDER BY n.key
  LIMIT $limit
  RETURN collect(n) AS around
}
CALL (mentioned, around) {
  UNWIND mentioned AS e
  MATCH (e)-[r:RELATED]-(n:Entity)
  WHERE r.user_id = $user_id AND (n IN mentioned OR n IN around)
  RETURN collect(DISTINCT {source: startNode(r).key, target: endNode(r).key,
                           predicate: r.predicate}) AS relations
}
RETURN [e IN mentioned | {key: e.key, name: e.name, type: e.type}] AS entities,
       [n IN around | {key: n.key, name: n.name, type: n.type}] AS neighbours,
       relations
