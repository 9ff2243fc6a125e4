// Spotter viewer page: chat (being written).
export {};
